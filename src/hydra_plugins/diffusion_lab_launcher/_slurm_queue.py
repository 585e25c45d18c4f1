"""Job states from ``squeue`` where SLURM keeps no accounting (``sacct`` fails: the local cluster of
scripts/slurm_local.sh, small clusters without slurmdbd).

submitit learns that a job ended from its result file, or else from ``sacct``. Without accounting a job that
ended without a result file (killed, cancelled, out of memory, past its time limit) would be waited for
forever. ``squeue --states=all`` lists a job while it runs and for ``MinJobAge`` seconds after it ended, with
the same state names as ``sacct``; a job it no longer lists has ended.
"""

import contextlib
import subprocess
from collections.abc import Iterator

from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

# The state given to a job squeue no longer lists (submitit then reports it as ended without output).
LEFT_THE_QUEUE = "ENDED_NOT_LISTED"


def accounting_works() -> bool:
    try:
        return (
            subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=60).returncode == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


class QueueWatcher(SlurmInfoWatcher):
    """submitit's SLURM watcher, reading ``squeue`` instead of ``sacct``."""

    def _make_command(self):
        if not self._registered - self._finished:
            return None
        return ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%N"]

    def read_info(self, string):
        text = string if isinstance(string, str) else string.decode()
        listed = super().read_info("JobID|State|NodeList\n" + text)
        for job_id in self._registered - set(listed):
            listed[job_id] = {"JobID": job_id, "State": LEFT_THE_QUEUE, "NodeList": ""}
        return listed


@contextlib.contextmanager
def queue_watcher_without_accounting() -> Iterator[None]:
    """While it is open, submitit's SLURM jobs read their states from squeue if sacct does not work."""
    if accounting_works():
        yield
        return
    before = SlurmJob.watcher
    SlurmJob.watcher = QueueWatcher(delay_s=60)
    try:
        yield
    finally:
        SlurmJob.watcher = before
