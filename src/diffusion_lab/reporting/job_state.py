"""What a job is doing now: its recorded state checked against its process, its progress and its last output.

A record can be stale: a training killed outright (kill -9, the out-of-memory killer) or a launcher killed with
its jobs leaves ``RUNNING`` in ``run_status.json`` / ``sweep_status.json`` for ever. The run lock tells: a
training holds ``<run>/.run.lock`` for its life and the kernel drops it with the process, so a job recorded as
running whose lock is free (and whose process is gone) is LOST, not running. This works for jobs on this machine;
one recorded on another host is shown as recorded, marked unchecked. The jobs of a SLURM sweep are where SLURM
says they are (``slurm.py``).
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import last_error_line
from ..run_lock import lock_holder, process_alive
from ..run_status import FINAL_STATES
from .runs import Job, stopped_early
from .slurm import NOT_LISTED, QUEUED_STATES, RUNNING_STATES

__all__ = ["JobState", "job_state", "evaluation_state", "ACTIVE"]

ACTIVE = ("RUNNING", "STARTING", "QUEUED")  # states of a job not yet ended
_STEP_CHECKPOINT = re.compile(r"step_(\d+)\.ckpt$")


@dataclass
class JobState:
    state: str  # RUNNING, STARTING, QUEUED, COMPLETED, INCOMPLETE, INTERRUPTED, FAILED, LOST or unknown
    step: int | None = None  # steps trained (the newest of the record, the metrics and the step checkpoints)
    max_steps: int | None = None
    eta_s: float | None = None  # for a running job: its remaining steps at its last logged speed
    idle_s: float | None = None  # seconds since the job last wrote its log, metrics or a checkpoint
    checked: bool = True  # False: recorded on another host (or in SLURM, which did not answer), not checked
    note: str = ""  # why it failed (its error line), or what a lost job left


def job_state(
    job: Job, host: str | None = None, now: float | None = None, slurm: dict[str, str] | None = None
) -> JobState:
    """``job``'s state now (``host``: this machine's name; ``now``: the time; ``slurm``: SLURM's states by job
    id, ``slurm.slurm_states``, for the jobs of a SLURM sweep)."""
    host = host or socket.gethostname()
    now = time.time() if now is None else now
    state = JobState(state="unknown", max_steps=_positive(job.config.get("max_steps")))
    state.step = _steps_done(job)
    state.idle_s = _idle(job, now)
    scheduler = (slurm or {}).get(str(job.record.get("slurm_job_id")))
    state.state, state.checked = _state(job, host, scheduler)
    if state.state == "RUNNING":
        state.eta_s = _eta(job, state)
    elif state.state == "FAILED":
        said = f"SLURM ended it: {scheduler}" if scheduler else ""
        state.note = job.run_status.get("error") or last_error_line(_log(job)) or said
    elif state.state == "LOST":
        state.note = _lost_note(job)
    return state


def evaluation_state(evaluation: dict[str, Any], host: str | None = None) -> str:
    """The state of one of ``Job.evaluations``: done, running (its table is partial and the process scoring
    it lives) or stopped (partial, its process gone; or on another host, unchecked)."""
    if not stopped_early(evaluation):
        return "done"
    process = evaluation["summary"].get("process") or {}
    here = process.get("host") == (host or socket.gethostname())
    return "running" if here and process_alive(process.get("pid")) else "stopped"


def _state(job: Job, host: str, scheduler: str | None) -> tuple[str, bool]:
    """(state, checked): the records' word, verified against the run lock and the process where they can be,
    or against SLURM (``scheduler``: its state of the job) for a job a SLURM sweep submitted."""
    run, rec = job.run_status, job.record
    holder = lock_holder(job.dir)
    if isinstance(holder, int):
        return "RUNNING", True
    if rec.get("status") == "SUBMITTED":  # in SLURM's hands: its state is SLURM's to tell
        return _slurm_state(run, scheduler)
    if job.status in FINAL_STATES:  # as the report has it: the launcher's FAILED, else the run's own end
        return job.status, True
    if run.get("status") == "RUNNING":  # began training, and never recorded its end
        return _recorded_running(run, host, "RUNNING")
    if rec.get("status") == "RUNNING":  # its launcher started it; its training has not begun (or never will)
        return _recorded_running(rec, host, "STARTING")
    if rec.get("status") == "QUEUED":  # waits for its launcher, if that still runs
        launcher = rec.get("sweep", {})
        return _recorded_running(
            {"pid": launcher.get("launcher_pid"), "host": launcher.get("launcher_host")}, host, "QUEUED"
        )
    return str(rec.get("status") or "unknown"), True


def _slurm_state(run: dict[str, Any], scheduler: str | None) -> tuple[str, bool]:
    """A submitted job's state from SLURM's: queued, running, or ended -- then as its run recorded the end, or
    FAILED where SLURM ended it before the run could (a time limit, out of memory, cancelled), LOST where SLURM
    no longer lists it. Unchecked where SLURM did not answer (not on the cluster's machines): the run's own
    record, else queued."""
    if scheduler in QUEUED_STATES:
        return "QUEUED", True
    if scheduler in RUNNING_STATES:
        return "RUNNING", True
    if run.get("status") in FINAL_STATES:
        return run["status"], True
    if scheduler is None:
        return ("RUNNING" if run.get("status") == "RUNNING" else "QUEUED"), False
    return ("LOST" if scheduler == NOT_LISTED else "FAILED"), True


def _lost_note(job: Job) -> str:
    if job.record.get("status") == "QUEUED" and not job.run_status:
        return "recorded as queued, but its sweep's launcher is gone: it never started"
    if job.record.get("status") == "SUBMITTED":
        return "SLURM no longer lists it, and it recorded no end (cancelled before it started, or killed)"
    ckpt = _checkpoint_step(job)
    return "recorded as running, but its process is gone (killed, out of memory, or its machine lost); " + (
        f"its newest checkpoint is at step {ckpt}" if ckpt is not None else "it left no checkpoint"
    )


def _recorded_running(record: dict[str, Any], host: str, alive: str) -> tuple[str, bool]:
    """A record saying running (or queued) while the run lock is free or unreadable: ``alive`` while its process
    (or launcher) lives -- a training still starting, one on a file system without locks -- else LOST; unchecked
    on another host. A record that names no process (older files) is taken at its word."""
    if record.get("pid") is None:
        return alive, True
    if record.get("host") not in (None, host):
        return alive, False
    return (alive if process_alive(record.get("pid")) else "LOST"), True


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _checkpoint_step(job: Job) -> int | None:
    steps = [
        int(m.group(1))
        for p in job.dir.glob("checkpoints/step_*.ckpt")
        if (m := _STEP_CHECKPOINT.search(p.name))
    ]
    return max(steps) if steps else None


def _steps_done(job: Job) -> int | None:
    """Steps trained: a finished run's own count, else the most the metrics (logged 0-based) and checkpoints show."""
    if isinstance(job.run_status.get("global_step"), int):
        return job.run_status["global_step"]
    seen = [
        s
        for s in (None if job.last_step is None else job.last_step + 1, _checkpoint_step(job))
        if s is not None
    ]
    return max(seen) if seen else None


def _eta(job: Job, state: JobState) -> float | None:
    img_per_s, batch = job.last.get("perf/train_img_per_s"), job.config.get("batch_size")
    if not (
        img_per_s and isinstance(batch, int) and batch > 0 and state.max_steps and state.step is not None
    ):
        return None
    return max(0, state.max_steps - state.step) / (img_per_s / batch)


def _log(job: Job) -> Path:
    """The job's log: where its launcher wrote it, else ``job.log`` in its folder."""
    return Path(job.log) if job.log else job.dir / "job.log"


def _outputs(job: Job) -> list[Path]:
    return [_log(job), *job.dir.glob("csv/**/metrics.csv"), *job.dir.glob("checkpoints/*.ckpt")]


def _idle(job: Job, now: float) -> float | None:
    times = []
    for path in _outputs(job):
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            continue
    return max(0.0, now - max(times)) if times else None
