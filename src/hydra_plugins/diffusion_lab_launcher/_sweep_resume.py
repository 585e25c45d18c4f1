"""Continuing a sweep in its own folder: ``hydra.launcher.resume=true`` with ``hydra.sweep.dir`` the sweep's.

The command's jobs are matched, by their overrides, to the jobs that folder's ``sweep_status.json`` records
(overrides that only say how long to train, what to log and write, ``resume.RESUMABLE``, may differ: a
sweep can be continued to more steps). Then, for each job:

* recorded as completed (its return value written) with the same overrides: not run again, its record kept;
* a checkpoint in its folder: it continues from its newest whole checkpoint, in that folder, as
  ``ckpt_path=last`` continues any run (one metrics.csv, its first ``.hydra`` record kept, the resume recorded
  in ``.hydra/resume_<n>``), with the overrides given now;
* otherwise (it failed or was stopped before its first checkpoint): it starts again in its folder, where no
  training is lost;
* a job the folder does not record (the sweep extended, e.g. more seeds): a new job, under a number the sweep
  has not used.

A matched job keeps its number and folder; its record lists the earlier attempts (state, exit status, duration)
under ``attempts``, and its log gets the new attempt appended. Records of jobs this command does not name stay
in the file, and the earlier commands' ``multirun.yaml`` are kept as ``multirun.<n>.yaml`` (``SweepFolderCheck``).
Without ``resume``, a folder that holds a sweep is refused before Hydra writes anything in it.
"""

# No `from __future__ import annotations`: see _gpu_slots.py.
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence  # noqa: UP035 (as the rest of the plugin)

from hydra.core.utils import filter_overrides
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from diffusion_lab.errors import UserError, refuse
from diffusion_lab.overrides import override_key
from diffusion_lab.run_lock import process_alive
from hydra_plugins.diffusion_lab_launcher._job_results import read_return
from hydra_plugins.diffusion_lab_launcher._sweep_status import STATUS_FILE, read_status

__all__ = [
    "Earlier",
    "SweepFolderCheck",
    "check_no_runs",
    "check_not_running",
    "continuation",
    "earlier_jobs",
    "has_run",
    "job_numbers",
]


@dataclass
class Earlier:
    """What the sweep folder records of one of this command's jobs."""

    record: dict[str, Any]
    same_overrides: bool  # all of them, the resumable ones included
    dir: Path  # its folder (where the sweep folder is now, if it was moved)

    @property
    def num(self) -> int:
        return int(self.record["num"])

    def completed(self) -> bool:
        """Nothing left to do: its last attempt wrote its return value (only a job that ends does, and each
        attempt first deletes it) and was not stopped by a signal, with the same overrides. A job recorded as
        running whose launcher was killed may have completed after it."""
        returned = read_return(self.dir)
        done = returned is not None and not returned.get("stopped_by")
        return done and self.same_overrides and self.record.get("status") != "FAILED"

    def completed_record(self, job_dir: Path, log: Path) -> dict[str, Any]:
        """Its record, kept for a job carried over as completed (corrected where its launcher did not see it
        end)."""
        record = {**self.record, "dir": str(job_dir), "log": str(log)}
        if record.get("status") != "COMPLETED":
            was = record.get("status")
            record.update(
                status="COMPLETED", exit_code=0, note=f"recorded {was}; its return value shows it completed"
            )
        return record

    def attempts(self) -> list[dict[str, Any]]:
        """The earlier attempts, oldest first: those it lists, then its own last one."""
        keys = ("status", "exit_code", "duration_s", "gpus", "started", "ended")
        last = {k: self.record.get(k) for k in keys}
        return [*self.record.get("attempts", []), last]


def _resumable(override: str) -> bool:
    from diffusion_lab.resume import RESUMABLE  # imported here: it loads Lightning (see gpu_pool_launcher)

    key = override_key(override).lstrip("+~")
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE)


def _identity(overrides: Sequence[str]) -> tuple[str, ...]:
    """What makes a job the same job: its overrides without Hydra's and the resumable ones."""
    return tuple(sorted(o for o in filter_overrides(overrides) if not _resumable(o)))


def earlier_jobs(
    status: dict[str, Any], sweep_dir: Path, job_overrides: Sequence[Sequence[str]]
) -> list[Optional[Earlier]]:
    """For each job of the command, what the ``status`` file of the sweep in ``sweep_dir`` records of it (None
    for a job new to the sweep, and for every job when there is none)."""
    by_identity = {_identity(r.get("overrides", [])): r for r in status.get("jobs", [])}
    found: list[Optional[Earlier]] = []
    for overrides in job_overrides:
        record = by_identity.get(_identity(overrides))
        if record is None:
            found.append(None)
            continue
        same = sorted(record.get("overrides", [])) == sorted(filter_overrides(overrides))
        found.append(Earlier(record, same, _folder(record, status.get("sweep_dir"), sweep_dir)))
    return found


def _folder(record: dict[str, Any], recorded_sweep: Optional[str], sweep_dir: Path) -> Path:
    """A recorded job's folder, at its place in the sweep folder where that is now (it may have been moved)."""
    recorded = Path(record["dir"])
    try:
        return sweep_dir / recorded.relative_to(recorded_sweep or "")
    except ValueError:
        return sweep_dir / recorded.name


def job_numbers(earlier: Sequence[Optional[Earlier]], first: int, recorded: Sequence[int]) -> list[int]:
    """Each job's number: a matched job's own; new jobs from ``first`` on, past the ``recorded`` numbers."""
    next_num = max([first - 1, *recorded]) + 1
    nums = []
    for e in earlier:
        if e is not None:
            nums.append(e.num)
        else:
            nums.append(next_num)
            next_num += 1
    return nums


def has_run(job_dir: Path) -> bool:
    """Whether a run trained in ``job_dir`` (it holds a checkpoint)."""
    from diffusion_lab.resume import checkpoints_in  # imported here: it loads Lightning

    return bool(checkpoints_in(job_dir))


def check_not_running(earlier: Sequence[Optional[Earlier]]) -> None:
    """Refuse to continue a sweep while a job recorded as running still runs on this host (its launcher was
    killed, its process was not): two processes would then train in one folder."""
    for e in earlier:
        if e is None or e.record.get("status") != "RUNNING" or e.record.get("host") != socket.gethostname():
            continue
        if process_alive(e.record.get("pid")):
            raise UserError(
                f"job #{e.num} of this sweep still runs (pid {e.record['pid']}, {e.dir.name}); stop it or let it "
                "end before continuing the sweep"
            )


def check_no_runs(sweep_dir: Path, job_dirs: Sequence[Path]) -> None:
    """Refuse a sweep (without resume) whose jobs would start in folders that already hold runs."""
    taken = [d for d in job_dirs if has_run(d)]
    if taken:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} already holds {len(taken)} of this sweep's job(s) with checkpoints "
            f"(e.g. {taken[0].name}); continue the sweep with hydra.launcher.resume=true, or give another "
            "hydra.sweep.dir"
        )


def continuation(jobs: Sequence[Any]) -> str:
    """How a continued sweep's jobs (``_job_process.Job``) go on: kept, resumed, started again, new."""
    kept = sum(j.carried is not None for j in jobs)
    resumed = sum(j.carried is None and "ckpt_path=last" in j.command for j in jobs)
    again = sum(j.carried is None and bool(j.attempts) for j in jobs) - resumed
    new = len(jobs) - kept - resumed - again
    return (
        f"{kept} completed earlier (kept), {resumed} resumed from their checkpoints, {again} started again, "
        f"{new} new"
    )


class SweepFolderCheck(Callback):
    """A Hydra callback of training (conf/hydra/default.yaml), before the sweeper writes into the sweep folder:
    a folder that already holds a sweep (its status file lists jobs) is refused in one line, exit 2, unless the
    launcher continues it (``hydra.launcher.resume=true``); then the earlier command's ``multirun.yaml``, which
    the sweeper is about to replace, is kept as ``multirun.<n>.yaml``."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = read_status(sweep_dir / STATUS_FILE).get("jobs") or []
        if not jobs:
            return
        resume = OmegaConf.select(config, "hydra.launcher.resume", default=None)
        if not resume:
            how = "continue it with hydra.launcher.resume=true, or give" if resume is False else "give"
            refuse(
                f"hydra.sweep.dir={sweep_dir} already holds a sweep ({len(jobs)} job(s) in {STATUS_FILE}); "
                f"{how} another hydra.sweep.dir"
            )
        keep_command(sweep_dir)


def keep_command(sweep_dir: Path) -> None:
    """``multirun.yaml`` (the command that ran the sweep so far) moved to the first free ``multirun.<n>.yaml``."""
    current = sweep_dir / "multirun.yaml"
    if not current.is_file():
        return
    n = 1
    while (sweep_dir / f"multirun.{n}.yaml").exists():
        n += 1
    current.rename(sweep_dir / f"multirun.{n}.yaml")
