"""What a job hands back: its task function's return value (written by ``SaveReturnValue`` inside the job) or,
when it failed, a ``JobFailed`` naming its exit status, its last error line and its log."""

# No `from __future__ import annotations`: see _gpu_slots.py.
import copy
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from diffusion_lab.errors import last_error_line

if TYPE_CHECKING:
    from hydra_plugins.diffusion_lab_launcher._job_process import Job

__all__ = [
    "ENV_RETURN",
    "RETURN_FILE",
    "JobFailed",
    "SaveReturnValue",
    "job_return",
    "read_return",
]

RETURN_FILE = ".hydra/job_return.json"
# Set for every job: where SaveReturnValue writes the return value.
ENV_RETURN = "DIFFUSION_LAB_JOB_RETURN"


class JobFailed(RuntimeError):
    """A job of the sweep exited with a non-zero status (its log says why)."""


class SaveReturnValue(Callback):
    """Added to each job's Hydra callbacks: writes the task function's return value (e.g. the final val/loss)
    where the launcher reads it, so sweepers that optimise a return value work with this launcher too. A training
    stopped by a signal (a preemption: it saved its checkpoint and exits 0) is marked ``stopped_by``, so that the
    launcher records it as interrupted, not completed."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        path = os.environ.get(ENV_RETURN)
        if not path or job_return.status != JobStatus.COMPLETED or os.environ.get("LOCAL_RANK", "0") != "0":
            return
        value = job_return._return_value
        stopped = stopped_by_signal()
        marks = {"stopped_by": stopped} if stopped else {}
        try:
            text = json.dumps({"return_value": value, **marks})
        except (TypeError, ValueError):
            text = json.dumps({"return_value": repr(value), **marks})
        # Imported here: diffusion_lab.io loads torch, which Hydra's plugin scan should not pay for.
        from diffusion_lab.io import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(text)


def stopped_by_signal() -> Any:
    """The signal that stopped this process's training (diffusion_lab's Preemption callback), or None; None for
    an application that does not train with diffusion_lab (its module was never loaded)."""
    preemption = sys.modules.get("diffusion_lab.callbacks.preemption")
    return preemption.stopped_by_signal() if preemption is not None else None


def read_return(job_dir: Path) -> dict[str, Any] | None:
    """What a job handed back (``return_value``, and ``stopped_by`` if a signal stopped it), or None."""
    path = job_dir / RETURN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def job_return(job: "Job", task_name: str) -> JobReturn:
    """The ``JobReturn`` Hydra's sweepers expect of a job that has ended."""
    task_cfg = copy.deepcopy(job.config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    ret = JobReturn(
        overrides=list(job.overrides),
        cfg=task_cfg,
        hydra_cfg=job.config,
        working_dir=os.getcwd(),
        task_name=task_name,
    )
    ret.status = JobStatus.COMPLETED if job.status == "COMPLETED" else JobStatus.FAILED
    if ret.status == JobStatus.COMPLETED:
        ret.return_value = (read_return(job.dir) or {}).get("return_value")
    elif job.exit_code == 0:  # stopped by a signal after saving its checkpoint
        ret.return_value = JobFailed(
            f"job #{job.num} was stopped before its end; continue the sweep with hydra.launcher.resume=true; "
            f"log: {job.log}"
        )
    else:
        tail = last_error_line(job.log)
        ret.return_value = JobFailed(
            f"job #{job.num} exited with status {job.exit_code}"
            + (f": {tail}" if tail else "")
            + f"; log: {job.log}"
        )
    return ret
