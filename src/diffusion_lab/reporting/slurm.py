"""SLURM's word on the jobs of a SLURM sweep: ``hydra/launcher=slurm`` records each job's SLURM id when it submits
it, and ``status`` asks SLURM where each one is -- ``squeue`` while SLURM lists the job (pending, running, and a
few minutes after its end), then ``sacct`` where the cluster keeps accounting. Where neither command answers
(not on the cluster's machines) nothing is known, and the records are shown as they are."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable

__all__ = ["NOT_LISTED", "QUEUED_STATES", "RUNNING_STATES", "slurm_states"]

NOT_LISTED = "NOT_LISTED"
QUEUED_STATES = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT")
RUNNING_STATES = ("RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Each job's state (``PENDING``, ``RUNNING``, ``COMPLETED``, ``TIMEOUT``, ...) by its id (``123_4`` for a
    task of an array); ``NOT_LISTED`` for one SLURM answered about but no longer lists (it ended a while ago, on a
    cluster without accounting); no entry where SLURM did not answer."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    # --states=all: ended jobs too, while SLURM still lists them; -r: one line per array task
    answered, states = _ask(["squeue", "-h", "--states=all", "-r", "-j", ",".join(ids), "-o", "%i|%T"])
    missing = [i for i in ids if i not in states]
    if missing:
        _, accounted = _ask(["sacct", "-n", "-X", "-P", "-j", ",".join(missing), "-o", "JobID,State"])
        for job in missing:
            if job in accounted:
                states[job] = accounted[job]
            elif answered:
                states[job] = NOT_LISTED
    return states


def _ask(command: list[str]) -> tuple[bool, dict[str, str]]:
    """(whether SLURM answered, the states it gave by job id)."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False, {}
    # squeue fails when it knows none of the ids asked about: an answer all the same
    answered = proc.returncode == 0 or "Invalid job id" in proc.stderr
    pairs = (line.split("|", 1) for line in proc.stdout.splitlines() if "|" in line)
    # the state's first word: sacct says "CANCELLED by 0"
    return answered, {job.strip(): state.split()[0] for job, state in pairs if state.split()}
