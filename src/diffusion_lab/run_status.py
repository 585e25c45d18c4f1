"""``<run>/run_status.json``: how a training is going and how it ended, written by the training itself.

A sweep's launcher records its jobs in ``sweep_status.json``; a run started on its own had no record of its end
but its terminal. Every training (global rank 0) writes this file, atomically, when it starts and when it ends:

* ``RUNNING``: its process id, host and start time;
* ``COMPLETED``: it reached its limit (``trainer.max_steps``; or its epochs or time where it has no step limit);
* ``INCOMPLETE``: it stopped before ``trainer.max_steps`` without a signal (``trainer.max_time``, an early stop),
  the report's "incomplete": not to be ranked with runs that trained their steps;
* ``INTERRUPTED``: a signal (SIGTERM, SIGUSR1) or Ctrl-C stopped it; its checkpoint holds the step it reached and
  ``resume`` is the command that continues it;
* ``FAILED``: an error stopped it; ``error`` is its one-line message.

A process killed outright (kill -9, the out-of-memory killer, a lost machine) leaves ``RUNNING`` behind;
``python -m diffusion_lab.status`` tells that from a live run by the run lock, which dies with its process. A
resume keeps the records of the attempts before it in ``attempts``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .io import atomic_path

__all__ = ["RUN_STATUS_FILE", "FINAL_STATES", "Outcome", "read_run_status", "recorded_run"]

RUN_STATUS_FILE = "run_status.json"
FINAL_STATES = ("COMPLETED", "INCOMPLETE", "INTERRUPTED", "FAILED")


class Outcome:
    """What the block of ``recorded_run`` hands back to be recorded: the fit's result (``train._fit``'s)."""

    def __init__(self) -> None:
        self.result: dict[str, Any] | None = None


def read_run_status(run_dir: str | Path) -> dict[str, Any]:
    """The run's record; empty where there is none or it cannot be read."""
    path = Path(run_dir) / RUN_STATUS_FILE
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


@contextlib.contextmanager
def recorded_run(run_dir: Path, max_steps: int | None, resume: str) -> Iterator[Outcome]:
    """Record the run as RUNNING, then as whatever ended the block: the result set on the yielded ``Outcome``
    (COMPLETED, INCOMPLETE or INTERRUPTED by a signal), an error (FAILED) or Ctrl-C (INTERRUPTED). ``resume`` is
    the command that continues the run."""
    # Imported here: the report and the status command read records without loading Lightning.
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:
        yield Outcome()
        return
    earlier = read_run_status(run_dir)
    if earlier.get("status") == "RUNNING":  # this process holds the run lock: that one cannot be running
        earlier.update(
            status="LOST", note="ended without recording its end (killed, out of memory, machine lost)"
        )
    attempts = [*earlier.pop("attempts", []), earlier] if earlier else []
    started = time.time()
    record: dict[str, Any] = {
        "status": "RUNNING",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": _iso(started),
        "max_steps": max_steps,
        **({"attempts": attempts} if attempts else {}),
    }
    _write(run_dir, record)
    outcome = Outcome()
    try:
        yield outcome
    except (KeyboardInterrupt, SystemExit):
        # Lightning answers Ctrl-C inside a fit by exiting 1 (SystemExit), after FinalCheckpoint saved the step:
        # a stop to resume from, not a failure.
        _end(run_dir, record, started, "INTERRUPTED", stopped_by="Ctrl-C", resume=resume)
        raise
    except BaseException as err:
        _end(run_dir, record, started, "FAILED", error=_one_line(err))
        raise
    _end(run_dir, record, started, **_final(outcome.result or {}, max_steps))


def _final(result: dict[str, Any], max_steps: int | None) -> dict[str, Any]:
    """The end a fit's result says: stopped by a signal, short of its steps, or complete."""
    step = result.get("global_step")
    fields: dict[str, Any] = {"global_step": step}
    if result.get("preempted"):
        p = result["preempted"]
        return {**fields, "status": "INTERRUPTED", "stopped_by": p["signal"], "resume": p["resume"]}
    if isinstance(max_steps, int) and max_steps > 0 and isinstance(step, int) and step < max_steps:
        return {
            **fields,
            "status": "INCOMPLETE",
            "reason": f"stopped at step {step} of trainer.max_steps={max_steps}",
        }
    return {**fields, "status": "COMPLETED"}


def _end(run_dir: Path, record: dict[str, Any], started: float, status: str, **fields: Any) -> None:
    ended = time.time()
    # Ends after the whole of the RUNNING record except its attempts, which stay last (the longest part).
    attempts = record.pop("attempts", None)
    record.update(status=status, ended=_iso(ended), wall_time_s=round(ended - started, 1), **fields)
    if attempts:
        record["attempts"] = attempts
    _write(run_dir, record)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _write(run_dir: Path, record: dict[str, Any]) -> None:
    with atomic_path(Path(run_dir) / RUN_STATUS_FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
