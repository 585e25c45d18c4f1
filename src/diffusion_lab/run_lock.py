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

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from .errors import UserError

__all__ = ["LOCK_FILE", "run_lock"]

LOCK_FILE = ".run.lock"


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s run lock while the block runs; if another process holds it, one ``UserError`` naming it."""
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
        holder = path.read_text(errors="replace").strip() or "holder unknown"
        raise UserError(
            f"the run directory {path.parent} is in use by another training ({holder}); wait for it to end or "
            "stop it, then start or resume the run"
        ) from None
    except OSError as err:
        warnings.warn(
            f"cannot lock {path} ({err.strerror}); this run is not protected from a second training in its folder",
            stacklevel=3,
        )
        return False
    return True
