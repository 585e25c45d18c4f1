"""``hydra/launcher=slurm`` (GPU nodes) and ``slurm_cpu``: each sweep job is a SLURM job, submitted through
hydra-submitit-launcher (the ``slurm`` extra), and a job that SLURM stops and requeues continues its training.

    python -m diffusion_lab.train -m hydra/launcher=slurm hydra.launcher.partition=gpu trainer=ddp trainer.devices=4 \
        schedule=linear,cosine

What this adds to submitit's launcher, inside each job:

* **A restart resumes.** SLURM restarts a requeued job with its first command; submitit runs the same sweep job
  again, in the same job directory. When the job has been restarted (``SLURM_RESTART_COUNT`` > 0) and its
  directory holds a whole checkpoint, it runs with ``ckpt_path=last`` (and ``hydra.output_subdir=null``, so the
  job's ``.hydra`` record stays that of its first run; the resume is recorded in ``.hydra/resume_<n>``): the
  training continues from its newest checkpoint, as ``train.py`` resumes any run.
* **A stop on a signal ends the run without a result**, so the sweep waits for the restarted run:
  - SLURM requeued the job (``scontrol requeue``, a preemption with ``PreemptMode=REQUEUE``, Lightning's
    auto-requeue on SIGUSR1): SLURM sends SIGTERM; the ``Preemption`` callback saves ``checkpoints/last.ckpt``
    at the next batch end and the fit returns; the job leaves and SLURM restarts it.
  - submitit's notice (SIGUSR2, ``signal_delay_s`` before the time limit, or ``scancel --signal=USR2``): it is
    passed on as SIGTERM, so the training saves and stops the same way; then the job requeues itself
    (``scontrol requeue``). A notice near the time limit counts as a timeout: ``max_num_timeout`` of them are
    requeued, the next one fails the job. An earlier notice is a preemption and is always requeued.
  - A SIGTERM that requeued nothing (``scancel``, the time limit reached without a notice): the job fails,
    naming the command that resumes it.

And in the sweep's own process: job folders named as gpu_pool names them (``job_folder``: by the overrides
that vary, where the full list is too long for a folder name), ``<sweep dir>/sweep_status.json`` with each job
``SUBMITTED`` and its SLURM id as soon as SLURM has it (``diffusion_lab.status`` asks SLURM about it) and its end
when it ends, and — where SLURM keeps no accounting (``sacct`` fails) — job states read from ``squeue``
(``_slurm_queue``), so a job that dies without a result is reported instead of waited for.

A job that raises (bad input, an error in training) is a failed job of the sweep; the others go on, and the
sweep fails at the end naming it, as with every Hydra launcher.
"""

import contextlib
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence  # noqa: UP035 (as the rest of the plugin)

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf

from hydra_plugins.diffusion_lab_launcher._job_command import (
    job_config,
    job_folder,
    quote,
    resume_overrides,
    varying_keys,
)
from hydra_plugins.diffusion_lab_launcher._sweep_status import write_records

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
except ImportError:  # the `slurm` extra is not installed
    SubmititSlurmLauncher = None

__all__ = ["ResumableSlurmLauncher", "resume_overrides"]

MISSING_EXTRA = "hydra/launcher=slurm needs hydra-submitit-launcher: pip install -e '.[slurm]'"


def _say(message: str) -> None:
    print(f"[slurm] {message}", file=sys.stderr, flush=True)


def _failed(ret: JobReturn, message: str) -> JobReturn:
    _say(message)
    ret.status = JobStatus.FAILED
    ret.return_value = RuntimeError(message)
    return ret


@contextlib.contextmanager
def _on_submission(callback: Callable[[Sequence[Any]], None]) -> Iterator[None]:
    """While open, ``callback(jobs)`` runs as soon as submitit has submitted a sweep's jobs (its launcher then
    waits for their results, so this is the one moment their SLURM ids are known before the sweep ends)."""
    import submitit

    submit = submitit.AutoExecutor.map_array

    def map_array(executor: Any, fn: Callable, *iterables: Any) -> list:
        jobs = submit(executor, fn, *iterables)
        callback(jobs)
        return jobs

    submitit.AutoExecutor.map_array = map_array
    try:
        yield
    finally:
        submitit.AutoExecutor.map_array = submit


if SubmititSlurmLauncher is None:

    class ResumableSlurmLauncher(Launcher):
        def __init__(self, **params: Any) -> None:
            raise ImportError(MISSING_EXTRA)

        def setup(self, **kwargs: Any) -> None:
            raise ImportError(MISSING_EXTRA)

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            raise ImportError(MISSING_EXTRA)

else:

    class ResumableSlurmLauncher(SubmititSlurmLauncher):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            from hydra_plugins.diffusion_lab_launcher._slurm_queue import queue_watcher_without_accounting

            folders = self._folders(job_overrides, initial_job_idx)
            named = [[*o, f"hydra.sweep.subdir={quote(f)}"] for o, f in zip(job_overrides, folders)]
            self._submitted: dict[int, dict[str, Any]] = {}  # each job's record when SLURM took it
            submitted: list[Any] = []

            def on_submission(jobs: Sequence[Any]) -> None:
                submitted.extend(jobs)
                self._write_submitted(jobs, job_overrides, folders, initial_job_idx)

            with queue_watcher_without_accounting(), _on_submission(on_submission):
                try:
                    results = super().launch(named, initial_job_idx)
                except Exception:
                    # A job that ended without a result (cancelled, killed, out of memory) stops submitit's wait
                    # for all: record those that have ended, and leave the others SUBMITTED for SLURM to tell.
                    self._write_ended(submitted, folders, initial_job_idx)
                    raise
            self._write_status(list(enumerate(results, start=initial_job_idx)), folders, initial_job_idx)
            return results

        def _write_ended(self, jobs: Sequence[Any], folders: list[str], first: int) -> None:
            """The records of the submitted jobs that have ended: as their result says, or FAILED with why
            there is none."""
            ended = []
            for num, job in enumerate(jobs, start=first):
                if not job.done(force_check=True):
                    continue
                try:
                    ended.append((num, job.result()))
                except Exception:  # no result (submitit's error says so at length)
                    ended.append((num, f"ended without a result (SLURM: {job.state})"))
            self._write_status(ended, folders, first)

        def _write_submitted(
            self, jobs: Sequence[Any], job_overrides: Sequence[Sequence[str]], folders: list[str], first: int
        ) -> None:
            """Each job's record as soon as SLURM has it: ``SUBMITTED`` with its SLURM id, so that
            ``python -m diffusion_lab.status`` asks SLURM where it is while the sweep waits."""
            assert self.config is not None
            sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
            records = []
            for num, (job, overrides, folder) in enumerate(zip(jobs, job_overrides, folders), start=first):
                self._submitted[num] = {
                    "num": num,
                    "overrides": filter_overrides(list(overrides)),
                    "status": "SUBMITTED",
                    "slurm_job_id": str(job.job_id),
                    "dir": str(sweep_dir / folder),
                    "log": str(job.paths.stderr),
                }
                records.append(self._submitted[num])
            write_records(sweep_dir, {"launcher": "slurm"}, records)

        def _folders(self, job_overrides: Sequence[Sequence[str]], first: int) -> list[str]:
            """Each job's folder (``hydra.sweep.subdir``), named as gpu_pool names it: by the overrides that
            vary where the full list is too long for a folder name."""
            assert self.hydra_context is not None and self.config is not None
            varying = varying_keys(job_overrides)
            return [
                job_folder(
                    job_config(self.hydra_context, self.config, num, overrides), num, overrides, varying
                )
                for num, overrides in enumerate(job_overrides, start=first)
            ]

        def _write_status(self, ended: Sequence[tuple[int, Any]], folders: list[str], first: int) -> None:
            """``<sweep dir>/sweep_status.json`` as gpu_pool writes it (the report reads each job's status), for
            ``ended``: (job number, its JobReturn, or why it has none)."""
            assert self.config is not None
            sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
            records = []
            for num, outcome in ended:
                if isinstance(outcome, str):  # it ended without a result
                    records.append(
                        {**self._submitted[num], "status": "FAILED", "exit_code": None, "error": outcome}
                    )
                    continue
                completed = outcome.status == JobStatus.COMPLETED
                folder = sweep_dir / folders[num - first]
                task = OmegaConf.select(outcome.cfg, "task_name")
                records.append(
                    {
                        "num": num,
                        "overrides": filter_overrides(outcome.overrides or []),
                        "status": "COMPLETED" if completed else "FAILED",
                        "exit_code": 0 if completed else 1,
                        "dir": str(folder),
                        "log": str(folder / f"{task}.log"),
                        **(
                            {"slurm_job_id": self._submitted[num]["slurm_job_id"]}
                            if num in self._submitted
                            else {}
                        ),
                    }
                )
            write_records(sweep_dir, {"launcher": "slurm"}, records)

        # ------------------------------------------------------------------ inside the SLURM job
        def __call__(
            self,
            sweep_overrides: list[str],
            job_dir_key: str,
            job_num: int,
            job_id: str,
            singleton_state: dict[type, Singleton],
        ) -> JobReturn:
            # Imported here: Hydra's plugin scan (every command's start) should not pay for Lightning.
            from diffusion_lab.checkpointing import newest_good_checkpoint
            from hydra_plugins.diffusion_lab_launcher import _slurm_job as job

            stops = job.StopSignals()
            stops.install()
            overrides = list(sweep_overrides)
            job_dir = self._job_dir(overrides, job_num, singleton_state)
            if job.restart_count() and newest_good_checkpoint(job_dir / "checkpoints")[0] is not None:
                _say(
                    f"restart {job.restart_count()} of job {job.job_id()}: resuming from {job_dir}/checkpoints"
                )
                overrides = resume_overrides(overrides)
            ret = super().__call__(overrides, job_dir_key, job_num, job_id, singleton_state)
            stopped = _stop_signal(stops)
            return ret if stopped is None else self._after_stop(ret, stopped, stops, job_dir)

        def _job_dir(
            self, overrides: list[str], job_num: int, singleton_state: dict[type, Singleton]
        ) -> Path:
            """The job's directory, as ``run_job`` will make it (the sweep dir and the folder ``launch`` named)."""
            assert self.hydra_context is not None and self.config is not None
            Singleton.set_state(singleton_state)
            setup_globals()
            cfg = job_config(self.hydra_context, self.config, job_num, overrides)
            return Path(str(OmegaConf.select(cfg, "hydra.sweep.dir"))) / str(cfg.hydra.sweep.subdir)

        def _after_stop(self, ret: JobReturn, stopped: str, stops: Any, job_dir: Path) -> JobReturn:
            """A run stopped by a signal: leave without a result when the job is (or now gets) requeued, else
            fail it with the command that resumes it."""
            from submitit import JobEnvironment

            from hydra_plugins.diffusion_lab_launcher import _slurm_job as job

            resume = f"python -m diffusion_lab.train ckpt_path=last resume_dir={job_dir}"
            if job.requeued_by_slurm():
                raise SystemExit(f"[slurm] {stopped}: job {job.job_id()} was requeued; its next run resumes")
            if not stops.got_notice:
                return _failed(ret, f"stopped by {stopped} and not requeued; resume it with: {resume}")
            if not job.is_first_task():
                raise SystemExit("[slurm] stopped by the notice signal; the first task requeues the job")
            submitted = JobEnvironment().paths.submitted_pickle
            if job.timed_out(submitted, stops.started) and job.count_timeout(submitted) < 0:
                limit = self.params.get("max_num_timeout", 0)
                return _failed(
                    ret, f"timed out after max_num_timeout={limit} resubmissions; resume with: {resume}"
                )
            why_not = job.requeue()
            if why_not is not None:
                return _failed(ret, f"could not be requeued ({why_not}); resume it with: {resume}")
            raise SystemExit(f"[slurm] job {job.job_id()} requeued itself; its next run resumes")


def _stop_signal(stops: Any) -> Any:
    """The signal that stopped this job's run, if one did: during the fit the Preemption callback holds
    SIGTERM, outside it ``stops`` does."""
    from diffusion_lab.callbacks.preemption import stopped_by_signal

    return stopped_by_signal() or (stops.received[0] if stops.received else None)
