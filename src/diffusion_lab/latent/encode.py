"""A dataset encoded once by a frozen autoencoder, cached on disk, and LDM's latent scale factor.

Each image is encoded to the *mean* of its posterior q(z | x), not a sample: a cache holds one code per image
for every epoch, so a sample would freeze one draw of the posterior noise for the whole run (no better than the
mean, and not reproducible from the key). When the pixel data flip images at random (``data.random_flip``), the
mirrored images are encoded too, so the latent training set flips exactly as the pixel one does.

A cache entry is keyed by the autoencoder checkpoint's sha256, the data (its class and options that change
which images a split holds), the split and the encoding; the key is written beside it as JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..io import cached

__all__ = ["ENCODING", "encode_dataset", "cached_encoding", "cache_path", "scale_factor", "clean_batches"]

ENCODING = "posterior_mean"
ENCODE_BATCH_SIZE = 256


def scale_factor(codes: Tensor) -> float:
    """LDM's ``scale_factor``: 1 / the standard deviation of all latent elements, so the diffusion sees
    unit-variance data (Rombach et al. 2022, appendix G)."""
    return float(1.0 / codes.double().flatten().std())


def clean_batches(dataset, batch_size: int = ENCODE_BATCH_SIZE) -> Iterator[tuple[Tensor, Tensor]]:
    """(images (B, C, H, W) in [-1, 1], labels (B,)) of the whole dataset in order, never augmented."""
    n = len(dataset)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        if hasattr(dataset, "transform") and hasattr(dataset, "data"):  # images held in memory
            images = dataset.transform(dataset.data[start:stop], augment=False)
        elif hasattr(dataset, "load"):  # image files decoded one by one
            images = torch.stack([dataset.load(i) for i in range(start, stop)])
        else:
            raise TypeError(
                f"cannot encode a {type(dataset).__name__}: it has neither data + transform nor load"
            )
        yield images, dataset.labels[start:stop]


@torch.no_grad()
def encode_dataset(encoder: nn.Module, dataset, mirrored: bool, device: torch.device) -> dict[str, Tensor]:
    """``{"codes": (N, c, h, w), "labels": (N,)}`` (and ``"mirrored"``: the codes of the flipped images) on the
    CPU, from ``encoder.encode(x) -> (mean, logvar)``."""
    codes, flipped, labels = [], [], []
    for images, y in clean_batches(dataset):
        images = images.to(device)
        codes.append(encoder.encode(images)[0].float().cpu())
        if mirrored:
            flipped.append(encoder.encode(images.flip(-1))[0].float().cpu())
        labels.append(y)
    out = {"codes": torch.cat(codes), "labels": torch.cat(labels)}
    if mirrored:
        out["mirrored"] = torch.cat(flipped)
    return out


def _key_json(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, default=str)


def cache_path(cache_dir: str | Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(_key_json(key).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{key.get('split', 'codes')}-{digest}.pt"


def cached_encoding(cache_dir: str | Path, key: dict[str, Any], compute) -> dict[str, Tensor]:
    """The entry of ``key`` from ``cache_dir``, or ``compute()`` saved there atomically (with the key as JSON
    beside it). An unreadable entry is computed again."""
    return cached(
        cache_path(cache_dir, key),
        key,
        compute,
        problem=lambda e: (
            None if isinstance(e, dict) and isinstance(e.get("codes"), Tensor) else "holds no codes"
        ),
        describe=lambda e: {"shape": list(e["codes"].shape)},
        what="latent cache",
    )
