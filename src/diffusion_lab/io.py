"""Writing artefacts atomically: a temp file in the same folder, fsynced, then ``os.replace`` — a reader never
sees a half-written file, and a crash mid-write (or a power loss after it) leaves the previous version intact.
Checkpoints go through ``diffusion_lab.checkpointing.AtomicCheckpointIO`` (the same, plus a sha256 sidecar)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from torch import Tensor

# torch and numpy load in the functions that use them: the atomic writes serve light commands too (``status``
# records through run_status), which would otherwise pay torch's import of about two seconds.

__all__ = [
    "atomic_path",
    "atomic_write",
    "cached",
    "file_sha256",
    "save_grid",
    "save_samples_npz",
    "to_uint8",
]


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path to write to; it replaces ``path`` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """``write(file)`` into a temp file beside ``path``, then rename it over ``path`` (see ``atomic_path``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def cached(
    path: Path,
    key: Mapping[str, Any],
    compute: Callable[[], Any],
    problem: Callable[[Any], str | None],
    describe: Callable[[Any], dict[str, Any]],
    what: str,
) -> Any:
    """What ``torch.save`` left at ``path`` when it loads and ``problem(obj)`` finds nothing wrong, else
    ``compute()`` saved there atomically, with ``key`` and ``describe(obj)`` as readable JSON beside it. A file
    that is unreadable or wrong is warned about (``what`` names the cache) and computed again."""
    import torch

    if path.is_file():
        try:
            found = torch.load(path, map_location="cpu", weights_only=True)
            wrong = problem(found)
        except Exception as err:
            wrong = f"unreadable ({type(err).__name__}: {err})"
        if wrong is None:
            return found
        warnings.warn(f"{what} {path} {wrong}; computing it again", stacklevel=3)
    made = compute()
    meta = {"key": json.loads(json.dumps(dict(key), sort_keys=True, default=str)), **describe(made)}
    meta.update(file=path.name, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write(path, lambda f: torch.save(made, f))
    atomic_write(
        path.with_suffix(".json"), lambda f: f.write(json.dumps(meta, indent=2, sort_keys=True).encode())
    )
    return made


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file, read 4 MiB at a time."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
    return sha.hexdigest()


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 [0, 255], the quantisation the data had."""
    import torch

    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid, quantised like ``to_uint8``: one-channel images as a
    greyscale PNG (about half the bytes of the RGB copy torchvision's ``save_image`` would write), others as RGB."""
    from PIL import Image
    from torchvision.utils import make_grid

    nrow = nrow or max(1, int(round(images.shape[0] ** 0.5)))
    grid = make_grid(to_uint8(images), nrow=nrow, padding=2, pad_value=255)
    pixels = grid[0] if images.shape[1] == 1 else grid.permute(1, 2, 0)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels.contiguous().numpy()).save(tmp, format="png")
    return Path(path)


def save_samples_npz(images: Tensor, path: str | Path, labels: Tensor | None = None) -> Path:
    """Save samples in an .npz as uint8 NHWC 0..255 (the layout FID tools expect), under two names each:
    ``images`` / ``labels``, and ``arr_0`` / ``arr_1``, the names the ADM (guided-diffusion) evaluator reads."""
    import numpy as np

    pixels = to_uint8(images).permute(0, 2, 3, 1).numpy() if images.ndim == 4 else images.numpy()
    arrays = {"images": pixels, "arr_0": pixels}
    if labels is not None:
        arrays["labels"] = arrays["arr_1"] = labels.cpu().numpy()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)
