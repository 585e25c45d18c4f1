"""One job of a sweep as a subprocess: started with its GPUs and environment, its output in its log, ended
(or stopped on an interrupt) with its exit status; one line printed at its start and at its end."""

# No `from __future__ import annotations`: see _gpu_slots.py (Job is a dataclass).
import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Optional  # noqa: UP035 (as the rest of the plugin)

from hydra.core.utils import filter_overrides
from omegaconf import DictConfig

from diffusion_lab.errors import LOG_COMMAND_PREFIX
from diffusion_lab.resolvers import SWEEP_DIR_ENV
from hydra_plugins.diffusion_lab_launcher._job_results import (
    ENV_RETURN,
    RETURN_FILE,
    read_return,
)

__all__ = ["Job", "SweepStopped", "job_env", "sigterm_as", "stop", "stopped_summary"]


@dataclass
class Job:
    num: int
    overrides: list[str]
    dir: Path
    config: DictConfig
    command: list[str]
    log: Path
    status: str = "QUEUED"
    gpus: tuple[str, ...] = ()
    proc: Optional[subprocess.Popen] = None
    log_file: Optional[IO[str]] = None
    started: Optional[float] = None
    ended: Optional[float] = None
    exit_code: Optional[int] = None
    # Continuing a sweep (_sweep_resume): the earlier attempts of a job run again, or the whole earlier entry of
    # a job carried over as completed (it does not run).
    attempts: list[dict[str, Any]] = field(default_factory=list)
    carried: Optional[dict[str, Any]] = None

    def describe(self) -> str:
        return " ".join(filter_overrides(self.overrides))

    def start(self, gpus: tuple[str, ...], env: dict[str, str]) -> None:
        """Run the job's command with ``env`` (this process's environment, adjusted), output to its log."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / RETURN_FILE).unlink(missing_ok=True)
        # Appended: a job run again (a sweep continued) keeps the log of its earlier attempts above this one.
        self.log_file = open(self.log, "a")  # noqa: SIM115 (closed when the job ends)
        self.log_file.write(LOG_COMMAND_PREFIX + " ".join(self.command) + "\n")
        self.log_file.flush()
        self.gpus, self.status, self.started = gpus, "RUNNING", time.time()
        self.proc = subprocess.Popen(
            self.command, stdout=self.log_file, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd()
        )
        where = f"GPU {','.join(gpus)}" if gpus else "CPU"
        print(f"[gpu_pool] #{self.num} started on {where}: {self.describe()}", flush=True)

    def poll(self) -> Optional[int]:
        """The exit status once the job has ended (the job is then finished), else None."""
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            self.finish(code)
        return code

    def finish(self, exit_code: int) -> None:
        """Record its end: completed, failed, or interrupted (exit 0, but a signal stopped its training: it saved
        a checkpoint to continue from)."""
        self.ended, self.exit_code = time.time(), exit_code
        self.status = "COMPLETED" if exit_code == 0 else "FAILED"
        if exit_code == 0 and (read_return(self.dir) or {}).get("stopped_by"):
            self.status = "INTERRUPTED"
        if self.log_file is not None:
            self.log_file.close()
        took = self.ended - (self.started or self.ended)
        print(
            f"[gpu_pool] #{self.num} {self.status} (exit {exit_code}) in {took:.1f} s: "
            f"{self.describe()}  log: {self.log}",
            flush=True,
        )


def job_env(job: Job, sweep_dir: Path, cuda_devices: Optional[str], parallel: int) -> dict:
    """This process's environment for ``job``: the sweep directory, where to write its return value, its GPUs
    (``cuda_devices``; None leaves CUDA_VISIBLE_DEVICES as it is) and, unless OMP_NUM_THREADS is set, a share of
    the cores: OMP_NUM_THREADS = cpu_count // ``parallel`` (the jobs running at once on this host). GPU jobs get
    it too: their CPU-side work (data, metrics) would otherwise start one thread per core in every job, and the
    jobs sharing a host's GPUs would then oversubscribe its cores many times over."""
    env = dict(os.environ)
    env[SWEEP_DIR_ENV] = str(sweep_dir)
    env[ENV_RETURN] = str(job.dir / RETURN_FILE)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_devices
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    return env


def stop(running: list[Job]) -> None:
    """Terminate the running jobs (an interrupt: Ctrl-C), kill those that do not end within 30 s; each is
    recorded INTERRUPTED."""
    for job in running:
        assert job.proc is not None
        job.proc.terminate()
    for job in running:
        assert job.proc is not None
        try:
            job.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            job.proc.kill()
            job.proc.wait()
        job.finish(job.proc.returncode if job.proc.returncode is not None else -1)
        job.status = "INTERRUPTED"


class SweepStopped(Exception):
    """The sweep's own process received SIGTERM."""


@contextlib.contextmanager
def sigterm_as(exception: type) -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM raises ``exception`` instead of ending the process at
    once, which would leave the jobs running without a launcher and the status file saying they run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise exception("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped_summary(why: BaseException, jobs: list[Job], status_file: Path) -> str:
    """What a stopped sweep left: the jobs it interrupted and those it never started."""
    signal_name = "SIGTERM" if isinstance(why, SweepStopped) else "Ctrl-C"
    interrupted = sum(j.status == "INTERRUPTED" for j in jobs)
    queued = sum(j.status == "QUEUED" for j in jobs)
    return (
        f"stopped by {signal_name}: {interrupted} running job(s) stopped (a training saves its checkpoint first), "
        f"{queued} not started; continue with the same command and hydra.launcher.resume=true; status: {status_file}"
    )
