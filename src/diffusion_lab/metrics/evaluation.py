"""Scoring generated samples against cached real statistics — shared by the training callback and the
evaluate CLI so both compute the numbers the same way.

Real features are computed once from a fixed real set (a split of the dataset, the first ``n_real`` images)
and cached on disk keyed by dataset, split, resolution, channels, feature network and count — never from
whatever batches the training loader happens to give.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .features import FeatureExtractor, build_feature_extractor, extract_features
from .quality import SampleQuality, real_features_cached

__all__ = ["QualitySettings", "build_extractor", "real_features_for", "score_generator", "rank_share"]


@dataclass
class QualitySettings:
    """What to score with: ``features`` is ``inception`` or the path of a classifier from
    ``python -m diffusion_lab.features``; ``inception_weights`` a local weights file (offline use)."""

    features: str = "inception"
    inception_weights: str | None = None
    allow_download: bool = False
    real_split: str = "train"
    n_real: int = 10000
    cache_dir: str = ".cache/metrics"
    batch_size: int = 500
    kid_subset_size: int = 1000
    pr_k: int = 3


def build_extractor(settings: QualitySettings) -> FeatureExtractor:
    if settings.features == "inception":
        return build_feature_extractor(
            "inception", settings.inception_weights, allow_download=settings.allow_download
        )
    path = Path(settings.features)
    if not path.is_file():
        raise FileNotFoundError(
            f"metrics.features={settings.features!r} is neither 'inception' nor an existing classifier file; "
            "make one with `python -m diffusion_lab.features data=<dataset>`"
        )
    return build_feature_extractor("classifier", str(path))


def real_features_for(
    datamodule, extractor: FeatureExtractor, settings: QualitySettings, device: torch.device
) -> Tensor:
    """Cached (N, D) features of the first ``n_real`` images of ``settings.real_split``."""
    key = {
        "dataset": datamodule.name,
        "root": str(getattr(datamodule, "root", None)),
        "split": settings.real_split,
        "shape": list(datamodule.data_shape),
        "features": extractor.feature_id,
        "n": settings.n_real,
    }

    def compute() -> Tensor:
        images = datamodule.real_images(settings.real_split, settings.n_real)
        return extract_features(extractor, images.split(settings.batch_size), device=device)

    return real_features_cached(settings.cache_dir, key, compute)


def rank_share(n: int, rank: int, world_size: int) -> int:
    """How many of ``n`` samples rank ``rank`` generates (the shares add up to exactly ``n``)."""
    return n // world_size + (1 if rank < n % world_size else 0)


def score_generator(
    metric: SampleQuality,
    generate: Callable[[int, torch.Generator], Tensor],
    n_local: int,
    batch_size: int,
    device: torch.device,
    seed: int,
    progress: bool = False,
) -> dict[str, float]:
    """Generate ``n_local`` samples in batches with ``generate(b, generator)`` (images in [-1, 1]), feed them
    to ``metric`` and compute (which all-gathers across ranks under DDP). Adds generation time and rate."""
    metric.reset()
    gen = torch.Generator(device=device).manual_seed(seed)
    started = time.time()
    done = 0
    with tqdm(total=n_local, desc="generating", disable=not progress, leave=False) as bar:
        for _ in range(math.ceil(n_local / batch_size)):
            b = min(batch_size, n_local - done)
            images = generate(b, gen)
            metric.update(images.to(device))
            done += b
            bar.update(b)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.time() - started
    scores = metric.compute()
    scores["gen_seconds"] = seconds
    scores["gen_img_per_s"] = n_local / seconds if seconds > 0 else float("inf")
    return scores
