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
"""

# No `from __future__ import annotations`: Hydra executes plugin modules outside sys.modules, where
# dataclasses cannot resolve string annotations.
import copy
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence  # noqa: UP035 (OmegaConf structured configs want typing)

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

__all__ = ["GPUPoolLauncher", "GPUPoolLauncherConf", "JobFailed", "SaveReturnValue"]

STATUS_FILE = "sweep_status.json"
RETURN_FILE = ".hydra/job_return.json"
# Set for every job: the sweep directory (diffusion_lab's W&B group comes from it) and where to put its result.
ENV_SWEEP_DIR = "DIFFUSION_LAB_SWEEP_DIR"
ENV_RETURN = "DIFFUSION_LAB_JOB_RETURN"
# Hydra overrides of the multirun that must not reach a job (a job is a plain single run).
_NOT_FORWARDED = (
    "hydra.mode",
    "hydra.launcher",
    "hydra/launcher",
    "hydra.sweeper",
    "hydra/sweeper",
    "hydra.sweep",
    "hydra.run",
    "hydra.job.num",
    "hydra.job.id",
)
_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


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


ConfigStore.instance().store(
    group="hydra/launcher", name="gpu_pool", node=GPUPoolLauncherConf, provider="diffusion_lab"
)


class JobFailed(RuntimeError):
    """A job of the sweep exited with a non-zero status (its log says why)."""


class SaveReturnValue(Callback):
    """Added to each job's Hydra callbacks: writes the task function's return value (e.g. the final val/loss)
    where the launcher reads it, so sweepers that optimise a return value work with this launcher too."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        path = os.environ.get(ENV_RETURN)
        if not path or job_return.status != JobStatus.COMPLETED or os.environ.get("LOCAL_RANK", "0") != "0":
            return
        value = job_return._return_value
        try:
            text = json.dumps({"return_value": value})
        except (TypeError, ValueError):
            text = json.dumps({"return_value": repr(value)})
        _atomic_write(Path(path), text)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _quote(value: str) -> str:
    """A string as a quoted Hydra override value (paths hold ',' '=' '[' from override_dirname)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return "'" + value.replace("'", "\\'") + "'"


def _shorten(text: str, limit: int) -> str:
    if len(text.encode()) <= limit:
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    return text.encode()[: limit - 11].decode(errors="ignore") + "_" + digest


def _safe_subdir(subdir: str, short_name: str, limit: int = 200) -> str:
    """``subdir`` with each component longer than ``limit`` bytes (file systems allow 255; override_dirname of a
    long command line) replaced by ``short_name`` (the job number and the overrides that vary across the sweep),
    shortened with a hash if it is still too long. Quote characters are dropped (``trainer.max_time='00:03:00'``
    names a folder ``...max_time=00:03:00``): a path holding them cannot be passed on as a quoted override."""
    parts = [_shorten(short_name, limit) if len(p.encode()) > limit else p for p in Path(subdir).parts]
    parts = [p.replace("'", "").replace('"', "") for p in parts]
    return str(Path(*parts)) if parts else subdir


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _visible_gpus() -> list[str]:
    """The CUDA device ids a job may be given (entries of the parent's CUDA_VISIBLE_DEVICES when it is set)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and not [x for x in env.split(",") if x.strip()]:
        return []
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
            count = sum(line.startswith("GPU ") for line in out.splitlines())
        except (OSError, subprocess.SubprocessError):
            count = 0
    if env is not None:
        return [x.strip() for x in env.split(",") if x.strip()][:count]
    return [str(i) for i in range(count)]


def _app_command(task_function: Optional[TaskFunction]) -> list[str]:
    """How to start the application again: ``python -m <module>`` (or the script), with its config flags."""
    import __main__

    module = getattr(task_function, "__module__", None) or "__main__"
    # The task function belongs to __main__ (`python -m app` / `python app.py`), or __main__ imported it
    # (`python -m pkg` whose __main__.py calls pkg.cli.main): start __main__ again. Otherwise the multirun was
    # started from other code (a test calling the app's main): start the task function's module.
    in_main = module == "__main__" or any(
        v is task_function or getattr(v, "__wrapped__", None) is task_function
        for v in vars(__main__).values()
    )
    spec = getattr(__main__, "__spec__", None)
    if in_main and spec is not None and spec.name:
        cmd = [sys.executable, "-m", spec.name.removesuffix(".__main__")]
    elif in_main and sys.argv and Path(sys.argv[0]).is_file():
        cmd = [sys.executable, str(Path(sys.argv[0]).resolve())]
    elif module != "__main__":
        cmd = [sys.executable, "-m", module]
    else:
        raise RuntimeError("gpu_pool: cannot tell how this application was started; run it with python -m")
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        flag = arg.split("=", 1)[0]
        if flag in _CONFIG_FLAGS:
            if "=" in arg:
                cmd.append(arg)
            elif i + 1 < len(args):
                cmd += [arg, args[i + 1]]
    return cmd


@dataclass
class _Job:
    num: int
    overrides: list[str]
    dir: Path
    config: DictConfig
    command: list[str]
    status: str = "QUEUED"
    gpus: tuple[str, ...] = ()
    proc: Optional[subprocess.Popen] = None
    log_file: Any = None
    started: Optional[float] = None
    ended: Optional[float] = None
    exit_code: Optional[int] = None

    def record(self, log_name: str) -> dict[str, Any]:
        duration = None
        if self.started is not None:
            duration = round((self.ended or time.time()) - self.started, 2)
        return {
            "num": self.num,
            "overrides": filter_overrides(self.overrides),
            "status": self.status,
            "exit_code": self.exit_code,
            "duration_s": duration,
            "gpus": list(self.gpus),
            "dir": str(self.dir),
            "log": str(self.dir / log_name),
            "started": _iso(self.started),
            "ended": _iso(self.ended),
        }


def _iso(t: Optional[float]) -> Optional[str]:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


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
    ) -> None:
        super().__init__()
        if gpus_per_job < 0:
            raise ValueError(f"hydra.launcher.gpus_per_job={gpus_per_job} must be >= 0")
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
        self.cpu_parallel = max(1, int(cpu_parallel))
        self.devices_override = devices_override
        self.log_name = log_name
        self.poll_seconds = float(poll_seconds)
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None
        self._pool: list[str] = []  # the GPUs jobs are given (CUDA ids), set by launch()
        self._parallel = 1

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    # ------------------------------------------------------------------------------------------ resources
    # The CUDA ids of this machine's visible GPUs (a class attribute: tests stand in a machine with GPUs).
    visible_gpus = staticmethod(_visible_gpus)

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

    # ------------------------------------------------------------------------------------------ jobs
    def _forwarded_hydra_overrides(self) -> list[str]:
        assert self.config is not None
        overrides = OmegaConf.to_container(self.config.hydra.overrides.hydra) or []
        return [o for o in overrides if not _override_key(str(o)).startswith(_NOT_FORWARDED)]

    def _make_job(
        self, num: int, overrides: Sequence[str], base_cmd: list[str], sweep_dir: Path, varying: set[str]
    ) -> _Job:
        assert self.hydra_context is not None and self.config is not None
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = num
            sweep_config.hydra.job.num = num
            # A path in an override value (features=/a/b.pt) must not nest the job directory.
            dirname = str(sweep_config.hydra.job.override_dirname)
            sweep_config.hydra.job.override_dirname = dirname.replace(os.sep, "_")
        previous = HydraConfig.instance().cfg
        # ${hydra:...} in the subdir resolves against this job's config.
        HydraConfig.instance().set_config(sweep_config)
        try:
            subdir = str(OmegaConf.select(sweep_config, "hydra.sweep.subdir"))
        finally:
            HydraConfig.instance().cfg = previous
        short = ",".join(
            sorted(o.lstrip("+~") for o in filter_overrides(overrides) if _override_key(o) in varying)
        )
        subdir = _safe_subdir(subdir, f"{num}_{short}" if short else str(num))
        job_dir = (sweep_dir / subdir).resolve()
        with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
            sweep_config.hydra.runtime.output_dir = str(job_dir)
        job_overrides = list(overrides)
        keys = {_override_key(o) for o in job_overrides}
        if self.gpus_per_job and self.devices_override and self.devices_override not in keys and self._pool:
            job_overrides.append(f"{self.devices_override}={self.gpus_per_job}")
        command = [
            *base_cmd,
            *job_overrides,
            *self._forwarded_hydra_overrides(),
            f"hydra.run.dir={_quote(str(job_dir))}",
            f"hydra.job.num={num}",
            f"hydra.job.id={num}",
            f"++hydra.callbacks.gpu_pool_return._target_={SaveReturnValue.__module__}.{SaveReturnValue.__name__}",
        ]
        return _Job(num=num, overrides=list(overrides), dir=job_dir, config=sweep_config, command=command)

    def _start(self, job: _Job, gpus: tuple[str, ...], sweep_dir: Path) -> None:
        env = dict(os.environ)
        env[ENV_SWEEP_DIR] = str(sweep_dir)
        env[ENV_RETURN] = str(job.dir / RETURN_FILE)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self._pool and self.gpus_per_job:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        elif self._pool:  # gpus_per_job=0 on a GPU machine: CPU jobs
            env["CUDA_VISIBLE_DEVICES"] = ""
        if not gpus and "OMP_NUM_THREADS" not in os.environ:  # CPU jobs side by side: share the cores
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self._parallel))
        job.dir.mkdir(parents=True, exist_ok=True)
        (job.dir / RETURN_FILE).unlink(missing_ok=True)
        job.log_file = open(job.dir / self.log_name, "w")  # noqa: SIM115 (closed when the job ends)
        job.log_file.write("$ " + " ".join(job.command) + "\n")
        job.log_file.flush()
        job.gpus, job.status, job.started = gpus, "RUNNING", time.time()
        job.proc = subprocess.Popen(
            job.command, stdout=job.log_file, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd()
        )
        where = f"GPU {','.join(gpus)}" if gpus else "CPU"
        print(
            f"[gpu_pool] #{job.num} started on {where}: {' '.join(filter_overrides(job.overrides))}",
            flush=True,
        )

    def _finish(self, job: _Job, exit_code: int) -> None:
        job.ended, job.exit_code = time.time(), exit_code
        job.status = "COMPLETED" if exit_code == 0 else "FAILED"
        if job.log_file is not None:
            job.log_file.close()
        took = job.ended - (job.started or job.ended)
        line = f"[gpu_pool] #{job.num} {job.status} (exit {exit_code}) in {took:.1f} s: "
        line += " ".join(filter_overrides(job.overrides)) + f"  log: {job.dir / self.log_name}"
        print(line, flush=True)

    def _write_status(self, sweep_dir: Path, jobs: list[_Job]) -> None:
        path = sweep_dir / STATUS_FILE
        records: dict[int, dict] = {}
        if path.is_file():  # earlier batches of the same sweep (a sweeper with max_batch_size)
            try:
                records = {int(r["num"]): r for r in json.loads(path.read_text()).get("jobs", [])}
            except (ValueError, KeyError, TypeError):
                records = {}
        records.update({j.num: j.record(self.log_name) for j in jobs})
        status = {
            "sweep_dir": str(sweep_dir),
            "launcher": "gpu_pool",
            "gpus_per_job": self.gpus_per_job,
            "jobs_per_gpu": self.jobs_per_gpu,
            "max_parallel": self._parallel,
            "gpus": list(self._pool),
            "jobs": [records[k] for k in sorted(records)],
        }
        _atomic_write(path, json.dumps(status, indent=2) + "\n")

    def _job_return(self, job: _Job) -> JobReturn:
        assert self.config is not None
        task_cfg = copy.deepcopy(job.config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        ret = JobReturn(
            overrides=list(job.overrides),
            cfg=task_cfg,
            hydra_cfg=job.config,
            working_dir=os.getcwd(),
            task_name=str(self.config.hydra.job.name),
        )
        ret.status = JobStatus.COMPLETED if job.exit_code == 0 else JobStatus.FAILED
        if ret.status == JobStatus.COMPLETED:
            result = job.dir / RETURN_FILE
            ret.return_value = json.loads(result.read_text())["return_value"] if result.is_file() else None
        else:
            tail = ""
            log = job.dir / self.log_name
            if log.is_file():
                lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
                errors = [ln for ln in lines if ln.startswith("error:")]
                tail = (errors or lines or [""])[-1].strip()
            ret.return_value = JobFailed(
                f"job #{job.num} exited with status {job.exit_code}"
                + (f": {tail}" if tail else "")
                + f"; log: {log}"
            )
        return ret

    # ------------------------------------------------------------------------------------------ launch
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)

        self._pool = self._gpu_pool()
        use_gpus = bool(self._pool) and self.gpus_per_job > 0
        if use_gpus and self.gpus_per_job > len(self._pool):
            raise ValueError(
                f"hydra.launcher.gpus_per_job={self.gpus_per_job} but only {len(self._pool)} GPU(s) are available"
            )
        capacity = len(self._pool) // self.gpus_per_job * self.jobs_per_gpu if use_gpus else self.cpu_parallel
        self._parallel = (
            min(self.max_parallel or capacity, capacity) if use_gpus else (self.max_parallel or capacity)
        )

        base_cmd = _app_command(self.task_function)
        # Keys whose value differs between jobs (names a job directory when the full override_dirname is too long).
        values: dict[str, list[str]] = {}
        for overrides in job_overrides:
            for o in overrides:
                values.setdefault(_override_key(o), []).append(o)
        varying = {k for k, v in values.items() if len(set(v)) > 1 or len(v) < len(job_overrides)}
        jobs = [
            self._make_job(initial_job_idx + i, o, base_cmd, sweep_dir, varying)
            for i, o in enumerate(job_overrides)
        ]
        names = {j.dir for j in jobs}
        if len(names) != len(jobs):
            raise ValueError(
                f"gpu_pool: jobs would share a directory; check hydra.sweep.subdir ({jobs[0].dir})"
            )
        where = f"GPUs {','.join(self._pool)}, {self.gpus_per_job} per job" if use_gpus else "CPU"
        if use_gpus and self.jobs_per_gpu > 1:
            where += f", up to {self.jobs_per_gpu} jobs per GPU"
        print(
            f"[gpu_pool] {len(jobs)} job(s), up to {self._parallel} at once on {where}; sweep: {sweep_dir}",
            flush=True,
        )
        self._write_status(sweep_dir, jobs)

        # Free GPU slots: each GPU jobs_per_gpu times.
        free = list(self._pool) * self.jobs_per_gpu if use_gpus else []
        queue, running = list(jobs), []
        try:
            while queue or running:
                changed = False
                while (
                    queue
                    and len(running) < self._parallel
                    and (not use_gpus or len(free) >= self.gpus_per_job)
                ):
                    gpus: tuple[str, ...] = ()
                    if use_gpus and self.jobs_per_gpu > 1:  # the GPU with the most free slots
                        best = min(free, key=lambda g: (-free.count(g), self._pool.index(g)))
                        gpus = (best,)
                        free.remove(best)
                    elif use_gpus:
                        gpus, free = tuple(free[: self.gpus_per_job]), free[self.gpus_per_job :]
                    job = queue.pop(0)
                    self._start(job, gpus, sweep_dir)
                    running.append(job)
                    changed = True
                for job in list(running):
                    assert job.proc is not None
                    code = job.proc.poll()
                    if code is None:
                        continue
                    self._finish(job, code)
                    running.remove(job)
                    # In pool order: a job gets the lowest free GPUs (2-GPU jobs keep to the same pairs).
                    free = sorted(free + list(job.gpus), key=self._pool.index) if use_gpus else free
                    changed = True
                if changed:
                    self._write_status(sweep_dir, jobs)
                else:
                    time.sleep(self.poll_seconds)
        finally:
            for job in running:  # interrupted (Ctrl-C): stop what this launcher started
                assert job.proc is not None
                job.proc.terminate()
            for job in running:
                try:
                    job.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    job.proc.kill()
                    job.proc.wait()
                self._finish(job, job.proc.returncode if job.proc.returncode is not None else -1)
                job.status = "INTERRUPTED"
            if running:
                self._write_status(sweep_dir, jobs)

        failed = [j for j in jobs if j.status != "COMPLETED"]
        summary = f"[gpu_pool] {len(jobs) - len(failed)} of {len(jobs)} job(s) completed"
        if failed:
            summary += f", {len(failed)} failed: " + ", ".join(f"#{j.num}" for j in failed)
        print(f"{summary}; status: {sweep_dir / STATUS_FILE}", flush=True)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [self._job_return(j) for j in jobs]
