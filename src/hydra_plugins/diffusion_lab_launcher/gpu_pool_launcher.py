"""``hydra/launcher=gpu_pool``: run a Hydra multirun's jobs in parallel, each in its own subprocess on its own GPU(s).

    python -m diffusion_lab.train -m schedule=linear,cosine loss=simple,hybrid variance=learned_range
    python -m diffusion_lab.train -m ... hydra.launcher.gpus_per_job=2 trainer.strategy=ddp
    python -m diffusion_lab.train -m ... hydra.launcher.gpus=[0,1] hydra.launcher.max_parallel=1

Each job is ``python -m <app> <its overrides> hydra.run.dir=<sweep dir>/<subdir> hydra.job.num=<n>``: a
normal single run (so Lightning DDP inside a job, which relaunches ``sys.argv``, works) with
``CUDA_VISIBLE_DEVICES`` set to the GPU(s) it was given and ``trainer.devices=<gpus_per_job>``. Jobs queue
until enough GPUs are free; on a machine without GPUs ``cpu_parallel`` jobs run at once. A failing job does not
stop the others. Each job's stdout+stderr go to ``<job dir>/job.log``; its state, exit status, duration and
GPUs to ``<sweep dir>/sweep_status.json`` (rewritten at every change, so it can be watched), and one line is
printed when it ends. When all have ended, a failed job makes the multirun exit non-zero.

The same command with ``hydra.sweep.dir=<the sweep> hydra.launcher.resume=true`` continues a sweep that was
stopped (a lost machine, Ctrl-C, failed jobs): completed jobs are kept, interrupted ones continue from their
checkpoints, the rest run (``_sweep_resume``). Without it, jobs whose folders already hold runs are refused.
"""

# No `from __future__ import annotations`: Hydra executes plugin modules outside sys.modules, where
# dataclasses cannot resolve string annotations.
#
# The parts, each in its own module (names with "_": Hydra's plugin scan skips them, so each loads once):
#   _gpu_slots     which GPUs there are and which are free          _job_command   a job's command line and folder
#   _job_process   a job as a subprocess (start, end, interrupt)     _job_results   what a job hands back
#   _sweep_status  sweep_status.json                                  _sweep_resume  continuing a sweep
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence  # noqa: UP035 (OmegaConf structured configs want typing)

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from diffusion_lab.overrides import override_key
from hydra_plugins.diffusion_lab_launcher._gpu_slots import GpuSlots, visible_gpus
from hydra_plugins.diffusion_lab_launcher._job_command import (
    app_command,
    forwarded,
    job_command,
    job_config,
    job_folder,
    resume_overrides,
    varying_keys,
)
from hydra_plugins.diffusion_lab_launcher._job_process import (
    Job,
    SweepStopped,
    job_env,
    sigterm_as,
    stop,
    stopped_summary,
)
from hydra_plugins.diffusion_lab_launcher._job_results import JobFailed, SaveReturnValue, job_return
from hydra_plugins.diffusion_lab_launcher._sweep_resume import (
    Earlier,
    check_no_runs,
    check_not_running,
    continuation,
    earlier_jobs,
    has_run,
    job_numbers,
)
from hydra_plugins.diffusion_lab_launcher._sweep_status import STATUS_FILE, read_status, write_status

__all__ = ["GPUPoolLauncher", "GPUPoolLauncherConf", "JobFailed", "SaveReturnValue"]


@dataclass
class GPUPoolLauncherConf:
    _target_: str = "hydra_plugins.diffusion_lab_launcher.gpu_pool_launcher.GPUPoolLauncher"
    # GPUs given to each job (CUDA_VISIBLE_DEVICES and `devices_override`); 0: jobs see no GPU.
    gpus_per_job: int = 1
    # Jobs sharing one GPU (with gpus_per_job=1): small models leave most of a large GPU idle, and several
    # processes on it fill the gaps. Each job goes to the GPU running the fewest jobs.
    jobs_per_gpu: int = 1
    # Jobs at once; null: (number of GPUs) // gpus_per_job * jobs_per_gpu, or cpu_parallel without GPUs.
    max_parallel: Optional[int] = None
    # Which GPUs (indices among the visible ones); null: all visible.
    gpus: Optional[list[int]] = None
    # Jobs at once on a machine without GPUs (or with gpus_per_job=0) when max_parallel is null.
    cpu_parallel: int = 2
    # The override that tells a job how many devices it has (null: none is added).
    devices_override: Optional[str] = "trainer.devices"
    # Each job's stdout and stderr, in its own directory.
    log_name: str = "job.log"
    poll_seconds: float = 0.2
    # Continue the sweep in hydra.sweep.dir: keep its completed jobs, resume the others from their checkpoints.
    resume: bool = False


ConfigStore.instance().store(
    group="hydra/launcher", name="gpu_pool", node=GPUPoolLauncherConf, provider="diffusion_lab"
)


class GPUPoolLauncher(Launcher):
    def __init__(
        self,
        gpus_per_job: int = 1,
        max_parallel: Optional[int] = None,
        gpus: Optional[Sequence[int]] = None,
        jobs_per_gpu: int = 1,
        cpu_parallel: int = 2,
        devices_override: Optional[str] = "trainer.devices",
        log_name: str = "job.log",
        poll_seconds: float = 0.2,
        resume: bool = False,
    ) -> None:
        super().__init__()
        if gpus_per_job < 0:
            raise ValueError(f"hydra.launcher.gpus_per_job={gpus_per_job} must be >= 0")
        if cpu_parallel < 1:
            raise ValueError(
                f"hydra.launcher.cpu_parallel={cpu_parallel} must be >= 1 (jobs at once without GPUs)"
            )
        if poll_seconds <= 0:
            raise ValueError(f"hydra.launcher.poll_seconds={poll_seconds} must be > 0")
        if max_parallel is not None and max_parallel < 1:
            raise ValueError(f"hydra.launcher.max_parallel={max_parallel} must be >= 1 (or null)")
        if jobs_per_gpu < 1 or (jobs_per_gpu > 1 and gpus_per_job != 1):
            raise ValueError(
                f"hydra.launcher.jobs_per_gpu={jobs_per_gpu} is invalid: it must be >= 1, and > 1 only with "
                f"gpus_per_job=1 (got {gpus_per_job})"
            )
        self.gpus_per_job = int(gpus_per_job)
        self.jobs_per_gpu = int(jobs_per_gpu)
        self.max_parallel = max_parallel
        self.gpus = None if gpus is None else [int(g) for g in gpus]
        self.cpu_parallel = int(cpu_parallel)
        self.devices_override = devices_override
        self.log_name = log_name
        self.poll_seconds = float(poll_seconds)
        self.resume = bool(resume)
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None
        self._slots = GpuSlots([], self.gpus_per_job, self.jobs_per_gpu)  # set by launch()
        self._parallel = 1

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    # ------------------------------------------------------------------------------------------ resources
    # The CUDA ids of this machine's visible GPUs (a class attribute: tests stand in a machine with GPUs).
    visible_gpus = staticmethod(visible_gpus)

    def _gpu_pool(self) -> list[str]:
        visible = self.visible_gpus()
        if self.gpus is None:
            return visible
        bad = [g for g in self.gpus if not 0 <= g < len(visible)]
        if bad:
            raise ValueError(
                f"hydra.launcher.gpus={self.gpus}: {bad} not among the {len(visible)} visible GPUs"
            )
        return [visible[g] for g in self.gpus]

    def _set_up_slots(self) -> None:
        """The GPU slots of this sweep, and how many jobs run at once."""
        self._slots = GpuSlots(self._gpu_pool(), self.gpus_per_job, self.jobs_per_gpu)
        capacity = self._slots.capacity(self.cpu_parallel)
        if self._slots.use_gpus:
            self._parallel = min(self.max_parallel or capacity, capacity)
        else:
            self._parallel = self.max_parallel or capacity

    def _cuda_devices(self, gpus: tuple[str, ...]) -> Optional[str]:
        """A job's CUDA_VISIBLE_DEVICES: its GPUs; none on a GPU machine with gpus_per_job=0; else unchanged."""
        if not self._slots.pool:
            return None
        return ",".join(gpus) if self.gpus_per_job else ""

    # ------------------------------------------------------------------------------------------ jobs
    def _with_devices(self, overrides: Sequence[str]) -> list[str]:
        """The job's overrides, plus ``<devices_override>=<gpus_per_job>`` on a GPU machine unless given."""
        job_overrides = list(overrides)
        keys = {override_key(o) for o in job_overrides}
        if (
            self.gpus_per_job
            and self.devices_override
            and self.devices_override not in keys
            and self._slots.pool
        ):
            job_overrides.append(f"{self.devices_override}={self.gpus_per_job}")
        return job_overrides

    def _make_job(
        self,
        num: int,
        overrides: Sequence[str],
        app: list[str],
        sweep_dir: Path,
        varying: set[str],
        earlier: Optional[Earlier] = None,
    ) -> Job:
        """Job ``num``; ``earlier``: what an earlier run of the sweep left of it (its folder, its state)."""
        assert self.config is not None
        assert self.hydra_context is not None
        sweep_config = job_config(self.hydra_context, self.config, num, overrides)
        job_dir = earlier.dir if earlier else sweep_dir / job_folder(sweep_config, num, overrides, varying)
        job_dir = job_dir.resolve()
        with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
            sweep_config.hydra.runtime.output_dir = str(job_dir)
        hydra_overrides = forwarded(OmegaConf.to_container(self.config.hydra.overrides.hydra) or [])
        run_overrides = self._with_devices(overrides)
        if earlier and has_run(job_dir):
            run_overrides = resume_overrides(run_overrides)
        job = Job(
            num=num,
            overrides=list(overrides),
            dir=job_dir,
            config=sweep_config,
            command=job_command(app, run_overrides, hydra_overrides, job_dir, num),
            log=job_dir / self.log_name,
        )
        if earlier and earlier.completed():
            job.carried = earlier.completed_record(job_dir, job.log)
            job.status, job.exit_code = "COMPLETED", 0
        elif earlier:
            job.attempts = earlier.attempts()
        return job

    def _make_jobs(self, job_overrides: Sequence[Sequence[str]], first: int, sweep_dir: Path) -> list[Job]:
        app = app_command(self.task_function)
        varying = varying_keys(job_overrides)
        earlier: list[Optional[Earlier]] = [None] * len(job_overrides)
        recorded: list[int] = []
        if self.resume:  # an earlier run's jobs keep their numbers and folders; new ones take unused numbers
            status = read_status(sweep_dir / STATUS_FILE)
            earlier = earlier_jobs(status, sweep_dir, job_overrides)
            check_not_running(earlier)
            recorded = [int(r["num"]) for r in status.get("jobs", [])]
        nums = job_numbers(earlier, first, recorded)
        jobs = [
            self._make_job(n, o, app, sweep_dir, varying, e) for n, o, e in zip(nums, job_overrides, earlier)
        ]
        if len({j.dir for j in jobs}) != len(jobs):
            raise ValueError(
                f"gpu_pool: jobs would share a directory; check hydra.sweep.subdir ({jobs[0].dir})"
            )
        if not self.resume:
            check_no_runs(sweep_dir, [j.dir for j in jobs])
        return jobs

    # ------------------------------------------------------------------------------------------ running
    def _write_status(self, sweep_dir: Path, jobs: list[Job]) -> None:
        settings = {
            "launcher": "gpu_pool",
            "gpus_per_job": self.gpus_per_job,
            "jobs_per_gpu": self.jobs_per_gpu,
            "max_parallel": self._parallel,
            "gpus": list(self._slots.pool),
            # Whose queue this is: `diffusion_lab.status` tells queued jobs whose launcher is gone (never started).
            "launcher_pid": os.getpid(),
            "launcher_host": socket.gethostname(),
        }
        write_status(sweep_dir, settings, jobs)

    def _start_ready(self, queue: list[Job], running: list[Job], sweep_dir: Path) -> bool:
        """Start queued jobs while a slot is free; True if any started."""
        started = False
        while queue and len(running) < self._parallel and self._slots.can_take():
            gpus = self._slots.take()
            job = queue.pop(0)
            job.start(gpus, job_env(job, sweep_dir, self._cuda_devices(gpus), self._parallel))
            running.append(job)
            started = True
        return started

    def _reap_ended(self, running: list[Job]) -> bool:
        """Finish the running jobs that have ended and free their GPUs; True if any ended."""
        ended = [job for job in running if job.poll() is not None]
        for job in ended:
            running.remove(job)
            self._slots.release(job.gpus)
        return bool(ended)

    def _run(self, jobs: list[Job], sweep_dir: Path) -> None:
        """Run every job, at most ``_parallel`` at once, rewriting the status file at each change. Stopped
        itself (Ctrl-C, or SIGTERM from a scheduler or ``kill``), it stops its running jobs first (each saves a
        checkpoint and is recorded INTERRUPTED), so a continued sweep resumes them, and exits 130 / 143."""
        queue, running = [j for j in jobs if j.carried is None], []
        with sigterm_as(SweepStopped):
            try:
                while queue or running:
                    started = self._start_ready(queue, running, sweep_dir)
                    if self._reap_ended(running) or started:
                        self._write_status(sweep_dir, jobs)
                    else:
                        time.sleep(self.poll_seconds)
            except (KeyboardInterrupt, SweepStopped) as why:
                stop(running)
                self._write_status(sweep_dir, jobs)
                print(f"[gpu_pool] {stopped_summary(why, jobs, sweep_dir / STATUS_FILE)}", flush=True)
                raise SystemExit(143 if isinstance(why, SweepStopped) else 130) from None

    def _announce(self, jobs: list[Job], sweep_dir: Path) -> None:
        where = "CPU"
        if self._slots.use_gpus:
            where = f"GPUs {','.join(self._slots.pool)}, {self.gpus_per_job} per job"
            if self.jobs_per_gpu > 1:
                where += f", up to {self.jobs_per_gpu} jobs per GPU"
        print(
            f"[gpu_pool] {len(jobs)} job(s), up to {self._parallel} at once on {where}; sweep: {sweep_dir}",
            flush=True,
        )
        if self.resume:
            print(f"[gpu_pool] continuing the sweep: {continuation(jobs)}", flush=True)

    @staticmethod
    def _summarize(jobs: list[Job], sweep_dir: Path) -> None:
        failed = [j for j in jobs if j.status != "COMPLETED"]
        summary = f"[gpu_pool] {len(jobs) - len(failed)} of {len(jobs)} job(s) completed"
        if failed:
            summary += f", {len(failed)} failed: " + ", ".join(f"#{j.num}" for j in failed)
        print(f"{summary}; status: {sweep_dir / STATUS_FILE}", flush=True)

    # ------------------------------------------------------------------------------------------ launch
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self._set_up_slots()
        jobs = self._make_jobs(job_overrides, initial_job_idx, sweep_dir)
        self._announce(jobs, sweep_dir)
        self._write_status(sweep_dir, jobs)
        self._run(jobs, sweep_dir)
        self._summarize(jobs, sweep_dir)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        task_name = str(self.config.hydra.job.name)
        return [job_return(j, task_name) for j in jobs]
