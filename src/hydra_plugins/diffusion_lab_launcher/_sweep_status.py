"""``<sweep dir>/sweep_status.json``: the launcher's settings and each job's state, exit status, duration, GPUs,
folder and log — rewritten whole (atomically) at every change, so it can be watched while the sweep runs."""

# No `from __future__ import annotations`: see _gpu_slots.py.
import json
import socket
import time
from pathlib import Path
from typing import Any, Optional, Sequence  # noqa: UP035 (as the rest of the plugin)

from hydra.core.utils import filter_overrides

from hydra_plugins.diffusion_lab_launcher._job_process import Job

__all__ = ["STATUS_FILE", "job_record", "read_records", "read_status", "write_records", "write_status"]

STATUS_FILE = "sweep_status.json"


def _iso(t: Optional[float]) -> Optional[str]:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def job_record(job: Job) -> dict[str, Any]:
    """The job's entry: a job carried over from an earlier run of the sweep keeps the entry it had there; a job
    run again lists its earlier attempts (``attempts``)."""
    if job.carried is not None:
        return job.carried
    duration = None
    if job.started is not None:
        duration = round((job.ended or time.time()) - job.started, 2)
    return {
        "num": job.num,
        "overrides": filter_overrides(job.overrides),
        "status": job.status,
        "exit_code": job.exit_code,
        "duration_s": duration,
        "gpus": list(job.gpus),
        # Where its process runs: a sweep continued later refuses a job whose process is still alive.
        "host": socket.gethostname(),
        "pid": job.proc.pid if job.proc is not None else None,
        "dir": str(job.dir),
        "log": str(job.log),
        "started": _iso(job.started),
        "ended": _iso(job.ended),
        **({"attempts": job.attempts} if job.attempts else {}),
    }


def read_status(path: Path) -> dict[str, Any]:
    """The status file's contents; empty where there is none or it cannot be read."""
    try:
        status = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}
    return status if isinstance(status, dict) else {}


def read_records(path: Path) -> dict[int, dict]:
    """Jobs already in the file, by number: earlier batches of the same sweep (a sweeper with max_batch_size),
    or an earlier run of the sweep being continued."""
    try:
        return {int(r["num"]): r for r in read_status(path).get("jobs", [])}
    except (ValueError, KeyError, TypeError):
        return {}


def write_status(sweep_dir: Path, settings: dict[str, Any], jobs: Sequence[Job]) -> None:
    """Write the sweep's status: ``settings`` (the launcher's), then every job, earlier batches' included."""
    write_records(sweep_dir, settings, [job_record(j) for j in jobs])


def write_records(sweep_dir: Path, settings: dict[str, Any], jobs: Sequence[dict[str, Any]]) -> None:
    """``write_status`` for job records (``job_record``'s fields) a launcher made itself."""
    path = sweep_dir / STATUS_FILE
    records = read_records(path)
    records.update({int(r["num"]): r for r in jobs})
    status = {"sweep_dir": str(sweep_dir), **settings, "jobs": [records[k] for k in sorted(records)]}
    # Imported here: diffusion_lab.io loads torch, which Hydra's plugin scan should not pay for.
    from diffusion_lab.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(status, indent=2) + "\n")
