"""One training at a time in a run folder: ``run_lock(folder)`` holds ``<folder>/.run.lock`` for the run's life.

Two trainings in one folder (a resume started while the run still trains, a sweep continued while its jobs
still run, two commands given the same ``hydra.run.dir``) would write the same checkpoints and the same
metrics.csv. The lock is the operating system's (``flock``): the kernel drops it when its process ends, however
it ends (kill -9 included), so a stale lock never blocks a resume. The file keeps who holds it (pid, host, start)
for the message of the training refused. On a file system without ``flock`` (some cluster file systems) the
run goes on unlocked, with a warning. Only the process of global rank 0 locks: the other ranks of a DDP run
train in the same folder by design.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

__all__ = [
    "LOCK_FILE",
    "LOCKS_TABLE",
    "check_not_in_use",
    "lock_holder",
    "process_alive",
    "process_rank",
    "run_lock",
]

LOCK_FILE = ".run.lock"
LOCKS_TABLE = Path("/proc/locks")  # Linux's table of the locks held on this machine


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s run lock while the block runs; if another process holds it, one ``UserError`` naming it."""
    # Imported here: the launcher plugin and the status command read locks without loading Lightning.
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:
        yield
        return
    path = Path(folder) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if _lock(fd, path):
            os.ftruncate(fd, 0)
            holder = (
                f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%dT%H:%M:%S')}"
            )
            os.write(fd, holder.encode())
        yield
    finally:
        # Closing the file releases the lock; the file stays (removing it would race a new locker).
        os.close(fd)


def _lock(fd: int, path: Path) -> bool:
    """Take the lock (True), or raise naming its holder; False where the file system cannot lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(path) from None
    except OSError as err:
        warnings.warn(
            f"cannot lock {path} ({err.strerror}); this run is not protected from a second training in its folder",
            stacklevel=3,
        )
        return False
    return True


def _in_use(path: Path) -> UserError:
    """The refusal of a training whose run folder's lock (``path``) another process holds, naming that one."""
    holder = path.read_text(errors="replace").strip() or "holder unknown"
    return UserError(
        f"the run directory {path.parent} is in use by another training ({holder}); wait for it to end or "
        "stop it, then start or resume the run"
    )


def check_not_in_use(folder: Path) -> None:
    """Refuse (``run_lock``'s ``UserError``) a training in ``folder`` while another one holds its lock, without
    taking the lock: for a check that runs before the lock can be taken (Hydra's ``on_run_start``, before
    Hydra rewrites the folder's ``.hydra`` record, which the training in it resumes from). The other ranks of a
    DDP run, started by rank 0 with its command line, pass: rank 0 holds the lock for them."""
    if process_rank() == 0 and isinstance(lock_holder(folder), int):
        raise _in_use(Path(folder) / LOCK_FILE)


# The variables Lightning reads this process's rank from when it loads (lightning.fabric.utilities.rank_zero).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def process_rank() -> int:
    """This process's rank: Lightning's ``rank_zero_only.rank`` once Lightning has set it (a strategy may change
    it), else the value Lightning would give it on loading, from the same variables. Read here rather than by
    loading Lightning, which costs about 5 s of every command that Hydra's run-start checks refuse."""
    from lightning_utilities.core.rank_zero import rank_zero_only  # Lightning's own, without Lightning

    rank = getattr(rank_zero_only, "rank", None)
    if rank is not None:
        return int(rank)
    found = [os.environ[key] for key in RANK_VARIABLES if os.environ.get(key) is not None]
    return int(found[0]) if found else 0


def lock_holder(folder: Path, table: Path = LOCKS_TABLE) -> int | None | str:
    """The process id holding ``folder``'s run lock on this machine, None when nobody holds it, or "unknown"
    where the kernel's lock table cannot be read (not Linux). Read from the table, not by trying the lock: a
    probe that took the lock for an instant could refuse a training starting in that instant."""
    path = Path(folder) / LOCK_FILE
    try:
        stat = path.stat()
    except OSError:
        return None  # never locked: no training has run in it since run folders were locked
    try:
        lines = table.read_text().splitlines()
    except OSError:
        return "unknown"
    # "1: FLOCK  ADVISORY  WRITE 12345 fe:00:2146306 0 EOF": pid, then device (hex major:minor) and inode.
    wanted = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    for line in lines:
        fields = line.split()
        if "FLOCK" in fields and "->" not in fields and wanted in fields:
            return int(fields[fields.index(wanted) - 1])
    return None


def process_alive(pid: object) -> bool:
    """Whether a process of this id lives on this machine (another user's included)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
