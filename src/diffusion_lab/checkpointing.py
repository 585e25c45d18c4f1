"""Checkpoints that survive a kill at any instant, and a check that a checkpoint is whole before resuming.

``AtomicCheckpointIO`` replaces Lightning's ``TorchCheckpointIO`` (training.py passes it to the Trainer). Lightning
writes through an fsspec transaction whose temporary file lies in the system temp folder, so on another file
system the final "move" is a copy: a kill during it leaves a truncated checkpoint under the final name, and
nothing is fsynced. Here each checkpoint is streamed to a temporary file *in the same folder*, hashed as it is
written, fsynced, and renamed over the final name (``os.replace``: atomic on POSIX); a sidecar
``<name>.sha256`` (``sha256sum -c`` format) records the digest. A reader — or a resume after a crash, a kill -9
or a full disk — sees the previous checkpoint or the new one, never a part of one.

``verify_checkpoint`` tells whether a file is a whole checkpoint: the digest when there is a sidecar, else a
metadata-only ``torch.load(mmap=True)`` (a truncated zip has no central directory). ``newest_good_checkpoint``
picks what ``ckpt_path=last`` resumes from.

A checkpoint is data: ``load_checkpoint_file`` is the one way every entry point (sample, evaluate, visualize,
resume, Lightning's own restore through ``AtomicCheckpointIO``) reads one. It unpickles with
``weights_only=True``, i.e. tensors and plain containers only: what our checkpoints hold (the module stores
its spec and extras as plain data; Lightning's loops, callbacks, optimizer and scheduler states are plain too).
A file naming any other global — which unpickling would import and call — is refused before anything runs.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import pickle
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

from .io import file_sha256

__all__ = [
    "CheckpointError",
    "load_checkpoint_file",
    "AtomicCheckpointIO",
    "BackgroundCheckpointIO",
    "atomic_torch_save",
    "sidecar_path",
    "trained_step",
    "file_sha256",
    "check_digest",
    "verify_checkpoint",
    "newest_good_checkpoint",
]

SIDECAR_SUFFIX = ".sha256"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, unsafe, or not written by diffusion_lab; ``reason`` is the
    message without the option and path."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def load_checkpoint_file(
    path: str | Path, map_location: Any = "cpu", mmap: bool = False, option: str = "ckpt"
) -> Any:
    """``torch.load`` of tensors and plain containers only; a file holding anything else (any other global,
    which unpickling would call) raises a one-line ``CheckpointError`` naming ``option`` and the global.
    Other failures (truncated, not a torch file) propagate as torch raises them."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path, err)
        if not unsafe:
            raise
        reason = (
            f"contains {unsafe} which a diffusion_lab checkpoint never holds; refusing to load it (it could "
            "run code)"
        )
        raise CheckpointError(f"{option}={str(path)!r} {reason}", reason) from None


def _unsafe_globals(path: str | Path, err: pickle.UnpicklingError) -> str:
    """The globals outside ``weights_only``'s allowlist that ``path`` names (read without unpickling), or
    the one torch's error names; "" when the error is not about a global (a damaged file)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        names = []
    if not names:
        names = re.findall(r"Unsupported global: GLOBAL (\S+)", str(err))
    return ", ".join(names)


class _HashingWriter:
    """A write-only file object that hashes what passes through it (torch.save streams into it)."""

    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse to fsync a directory
        pass
    finally:
        os.close(fd)


def _write_synced(folder: Path, name: str, write) -> str:
    """Write through ``write(file)`` into a temp file of ``folder``, fsync; returns the temp file's path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return tmp


def atomic_torch_save(obj: Any, path: str | Path) -> str:
    """``torch.save`` to ``path`` atomically with a ``.sha256`` sidecar; returns the hex digest.

    Order: checkpoint temp file (hashed while written) and sidecar temp file, both fsynced, then the checkpoint
    and then the sidecar are renamed into place. A kill between the two renames leaves a new checkpoint with the
    old digest: ``verify_checkpoint`` then calls it corrupt and a resume falls back to an older checkpoint —
    progress may be lost, a half-written file is never used.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    digest: dict[str, str] = {}

    def write_ckpt(f) -> None:
        writer = _HashingWriter(f)
        torch.save(obj, writer)
        digest["hex"] = writer.sha.hexdigest()

    tmp_ckpt = _write_synced(folder, path.name, write_ckpt)
    try:
        line = f"{digest['hex']}  {path.name}\n".encode()
        tmp_sum = _write_synced(folder, path.name + SIDECAR_SUFFIX, lambda f: f.write(line))
    except BaseException:
        os.unlink(tmp_ckpt)
        raise
    try:
        os.replace(tmp_ckpt, path)
        os.replace(tmp_sum, sidecar_path(path))
    finally:
        for tmp in (tmp_ckpt, tmp_sum):
            if os.path.exists(tmp):
                os.unlink(tmp)
    _fsync_dir(folder)
    return digest["hex"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic, fsynced, digest-checked local writes (see the module doc).

    Remote paths (``s3://...``) keep Lightning's own writer. Removing a checkpoint removes its sidecar too.
    ``seconds_writing`` adds up the time spent in writes (a part of a run's startup cost and of its steps).
    """

    seconds_writing = 0.0

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        started = time.perf_counter()
        try:
            if storage_options is not None or "://" in str(path):
                return super().save_checkpoint(checkpoint, path, storage_options)
            atomic_torch_save(checkpoint, path)
        finally:
            self.seconds_writing += time.perf_counter() - started

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        """Lightning's restore (``trainer.fit(ckpt_path=...)``) reads through the safe loader too."""
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        # map_location None keeps each tensor where it was saved, as Lightning's default does
        return load_checkpoint_file(path, map_location=map_location, option="ckpt_path")

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        if "://" not in str(path):
            sidecar = sidecar_path(path)
            if sidecar.is_file():
                sidecar.unlink()


class BackgroundCheckpointIO(AsyncCheckpointIO):
    """``AtomicCheckpointIO``'s writes in one background thread, so training waits only while the checkpoint's
    tensors are copied to host memory, not while they are serialised, hashed and fsynced.

    Lightning's ``AsyncCheckpointIO`` gives the thread, the order of writes (one worker) and the error handling: a
    failed write is raised at the next save and at the end of the fit (``teardown`` waits for every write), so the
    run fails rather than finishing with a checkpoint missing. It snapshots by cloning each tensor on its device,
    which doubles a model's GPU memory for optimizer and EMA state at every save; here the snapshot goes to host
    memory instead (one synchronous copy), and the thread never touches the GPU. Three things wait for the pending
    writes first: removing a checkpoint (``ModelCheckpoint`` replacing one), loading one, and Lightning's SLURM
    requeue checkpoint (``hpc_ckpt_*``), after which the job may be killed at any moment.
    """

    def __init__(self) -> None:
        super().__init__(AtomicCheckpointIO())
        # what training spent in save_checkpoint: the host copy, or the writes it waited for
        self.seconds_waiting = 0.0

    @property
    def seconds_writing(self) -> float:
        """Time spent writing, in the background thread (or in the foreground for a requeue checkpoint)."""
        return self.checkpoint_io.seconds_writing

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        started = time.perf_counter()
        try:
            if Path(str(path)).name.startswith("hpc_ckpt"):
                self.wait()
                self.checkpoint_io.save_checkpoint(checkpoint, path, storage_options)
                return
            self.raise_error()
            snapshot = apply_to_collection(checkpoint, torch.Tensor, _host_copy)
            self._ensure_setup()
            self._executor.submit(self._write, snapshot, path, storage_options)
        finally:
            self.seconds_waiting += time.perf_counter() - started

    def _write(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None) -> None:
        try:
            self.checkpoint_io.save_checkpoint(checkpoint, path, storage_options)
        except BaseException as err:
            self._error = self._error or err

    def wait(self) -> None:
        """Return once every write submitted so far is on disk; raise the first failed write's error."""
        if self._executor is not None:
            self._executor.submit(lambda: None).result()
        self.raise_error()

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def remove_checkpoint(self, path: Any) -> None:
        self.wait()
        self.checkpoint_io.remove_checkpoint(path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        self.wait()
        return self.checkpoint_io.load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    """A point-in-time copy of ``t`` in host memory (a CPU tensor is copied too: training goes on changing it)."""
    return t.detach().to("cpu", copy=True)


def check_digest(path: str | Path) -> bool | None:
    """Whether ``path`` matches its ``.sha256`` sidecar; ``None`` when there is no (readable) sidecar."""
    sidecar = sidecar_path(Path(path).resolve())
    try:
        expected = sidecar.read_text().split()[0].lower()
    except (OSError, IndexError):
        return None
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        return None
    return file_sha256(path) == expected


def verify_checkpoint(path: str | Path) -> str | None:
    """``None`` if ``path`` is a whole Lightning checkpoint, else why not (a few words).

    With a sidecar the whole file is hashed (about 1 s per GB); without one (a checkpoint written by another
    tool, or before this module existed) only its structure is read, which catches truncation but not a flipped
    byte inside a tensor.
    """
    path = Path(path)
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty file"
    real = path.resolve()  # ModelCheckpoint(save_last="link") makes last.ckpt a symlink: check its target
    digest = check_digest(real)
    if digest is not None:
        return (
            None if digest else f"its sha256 does not match {sidecar_path(real).name} (truncated or corrupt)"
        )
    try:
        ckpt = load_checkpoint_file(real, mmap=True)
    except CheckpointError as err:
        return f"it {err.reason}"
    except Exception as err:
        return f"unreadable ({type(err).__name__}: truncated or not a checkpoint)"
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return "not a Lightning checkpoint (no state_dict)"
    return None


def _candidates(folder: Path) -> list[Path]:
    """``last*.ckpt`` and ``step_*.ckpt`` of ``folder``, the furthest trained first, then the newest (``last``
    first on a tie). The step comes first: a run folder copied without its files' times (``cp -r``, a sync)
    has them in copy order, which would make an early step checkpoint look newer than last.ckpt."""
    files = [p for p in folder.glob("*.ckpt") if p.name.startswith(("last", "step")) and p.is_file()]

    def key(p: Path) -> tuple:
        return (trained_step(p), p.stat().st_mtime_ns, p.name.startswith("last"))

    return sorted(files, key=key, reverse=True)


def trained_step(path: Path) -> float:
    """The global step a checkpoint was written at, read without loading its tensors (mmap); infinite for a
    file that cannot be read, so that it is tried first and reported as skipped, with why. A resume asks for
    the same files' steps more than once, so each is read once per version of the file (inode, size, time)."""
    try:
        real = path.resolve()
        stat = real.stat()
    except OSError:
        return math.inf
    return _step_of(str(real), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _step_of(path: str, inode: int, size: int, mtime_ns: int) -> float:
    try:
        ckpt = load_checkpoint_file(path, mmap=True)
        return float(ckpt.get("global_step", -1)) if isinstance(ckpt, dict) else math.inf
    except Exception:
        return math.inf


def newest_good_checkpoint(folder: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The furthest trained whole checkpoint of ``folder`` (the newest of equals, among ``last*.ckpt`` and
    ``step_*.ckpt``) and the ones before it in that order that were skipped, with why."""
    skipped: list[tuple[Path, str]] = []
    for path in _candidates(Path(folder)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped
