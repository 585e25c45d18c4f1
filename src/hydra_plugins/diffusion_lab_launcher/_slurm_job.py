"""Inside a SLURM job started by the SLURM launcher: the stop signals it got, what SLURM says of it, requeueing.

* ``StopSignals`` records SIGTERM and submitit's notice signal (SIGUSR2 by default, sent ``signal_delay_s``
  before the time limit, or by ``scancel --signal=USR2``). The notice is turned into a SIGTERM of this process,
  so a training in progress stops the way it stops on any SIGTERM: the ``Preemption`` callback saves
  ``checkpoints/last.ckpt`` at the next batch end and the fit returns.
* ``requeued_by_slurm`` tells whether SLURM has already put this job back in the queue (``scontrol requeue``,
  a preemption with ``PreemptMode=REQUEUE``, Lightning's auto-requeue): it then counts one more restart than
  this run was started with (``SLURM_RESTART_COUNT``).
* ``restart_count``, ``requeue``, ``timed_out`` and ``count_timeout``: the rest of what the launcher needs.
"""

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional


def restart_count() -> int:
    """How many times SLURM has restarted this job before this run (0 on its first run)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def job_id() -> str:
    """This job's id as SLURM names it: ``<array job>_<task>`` for a task of an array (the jobs of a sweep),
    else its number. (SLURM 22.05 refuses to cancel an array's task by its own number.)"""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]


def is_first_task() -> bool:
    """The task that requeues (one per job: the others leave with it)."""
    return int(os.environ.get("SLURM_PROCID") or 0) == 0


def notice_signal() -> int:
    """The signal submitit asks SLURM to send before the time limit (``--signal=USR2@<signal_delay_s>``)."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    return int(getattr(signal, "SIG" + SlurmJobEnvironment.USR_SIG))


class StopSignals:
    """Records SIGTERM and the notice signal from ``install()`` on; the notice is passed on as a SIGTERM."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.started = time.time()
        self.notice = notice_signal()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._record)
        signal.signal(self.notice, self._notice)

    def _record(self, signum: int, frame) -> None:
        self.received.append(signal.Signals(signum).name)

    def _notice(self, signum: int, frame) -> None:
        self._record(signum, frame)
        # Whoever holds SIGTERM now acts on it: the Preemption callback during fit, else _record.
        os.kill(os.getpid(), signal.SIGTERM)

    @property
    def got_notice(self) -> bool:
        return signal.Signals(self.notice).name in self.received


def _scontrol_show_job() -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job_id()], capture_output=True, text=True, timeout=60
    ).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def requeued_by_slurm() -> bool:
    """SLURM has put this job back in the queue while this run was still going (it restarts it later)."""
    try:
        restarts = int(_scontrol_show_job().get("Restarts", "0"))
    except (OSError, ValueError, subprocess.SubprocessError):
        return False
    return restarts > restart_count()


def requeue() -> Optional[str]:
    """``scontrol requeue`` this job; None when done, else why not (SLURM's message)."""
    proc = subprocess.run(["scontrol", "requeue", job_id()], capture_output=True, text=True, timeout=60)
    return None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()


def _submission(submitted_pickle: Path):
    from submitit.core.utils import DelayedSubmission

    return DelayedSubmission.load(submitted_pickle)


def timed_out(submitted_pickle: Path, started: float) -> bool:
    """submitit's rule: a notice after 80% of the time limit (at most limit - 10 min) is the time limit, an
    earlier one a preemption."""
    limit_s = _submission(submitted_pickle)._timeout_min * 60
    return time.time() - started >= min(0.8 * limit_s, limit_s - 600)


def count_timeout(submitted_pickle: Path) -> int:
    """One timeout spent: the resubmissions left after it (``max_num_timeout`` counts down in the submitted
    pickle, as submitit does), written back so the next run starts with it. Negative: none left."""
    from submitit.core.utils import temporary_save_path

    delayed = _submission(submitted_pickle)
    left = delayed._timeout_countdown - 1
    if left >= 0:
        delayed.set_timeout(delayed._timeout_min, left)
        with temporary_save_path(submitted_pickle) as tmp:
            delayed.dump(tmp)
    return left
