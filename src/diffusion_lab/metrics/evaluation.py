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

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..score_names import score_names
from .feature_nets import (
    INCEPTION_URL,
    FeatureExtractor,
    build_feature_extractor,
    extract_features,
    inception_weights_cache_path,
)
from .quality import EXTRACT_BATCH_SIZE, SampleQuality, real_features_cached

__all__ = [
    "QualitySettings",
    "batch_seed",
    "build_extractor",
    "largest_batch",
    "rank_batches",
    "rank_share",
    "real_features_for",
    "score_generator",
    "score_names",
]


@dataclass
class QualitySettings:
    """What to score with: ``features`` is ``inception`` or the path of a classifier from
    ``python -m diffusion_lab.features``; ``inception_weights`` a local weights file (offline use).
    ``option_prefix`` is how the caller's config spells these options (``""`` for the evaluate CLI,
    ``"callbacks.sample_quality."`` for the training callback), for the error messages. ``batch_size`` is the
    generation batch; the feature network takes ``EXTRACT_BATCH_SIZE`` images at a time."""

    features: str = "inception"
    inception_weights: str | None = None
    allow_download: bool = False
    real_split: str = "train"
    n_real: int = 10000
    cache_dir: str = ".cache/metrics"
    batch_size: int = 500
    kid_subset_size: int = 1000
    pr_k: int = 3
    option_prefix: str = ""


def build_extractor(settings: QualitySettings) -> FeatureExtractor:
    """The feature network; a missing file is a one-line ``FileNotFoundError`` naming the option to set."""
    opt = settings.option_prefix
    if settings.features == "inception":
        if settings.inception_weights is not None:
            path = Path(str(settings.inception_weights)).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"{opt}inception_weights={str(path)!r}: no such file")
        try:
            return build_feature_extractor(
                "inception", settings.inception_weights, allow_download=settings.allow_download
            )
        except FileNotFoundError:
            if settings.inception_weights is not None:
                raise
            raise FileNotFoundError(
                f"FID Inception-v3 weights not found at {inception_weights_cache_path()}: download "
                f"{INCEPTION_URL} to that path (or anywhere and pass {opt}inception_weights=PATH), "
                f"or set {opt}allow_download=true when online"
            ) from None
    path = Path(settings.features).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{opt}features={settings.features!r} is neither 'inception' nor an existing classifier file; "
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
        return extract_features(extractor, images.split(EXTRACT_BATCH_SIZE), device=device)

    return real_features_cached(settings.cache_dir, key, compute)


def rank_share(n: int, rank: int, world_size: int) -> int:
    """How many of ``n`` items rank ``rank`` takes (the shares add up to exactly ``n``)."""
    return n // world_size + (1 if rank < n % world_size else 0)


def rank_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
    """``(index, size)`` of the generation batches of rank ``rank``.

    The ``n`` samples are cut into ``ceil(n / batch_size)`` global batches of balanced sizes (they differ by
    at most one, the larger first: 10000 at batch_size=512 is 20 batches of 500, not 19 of 512 and one of 272,
    which a compiled sampler would pad to 512 and throw 240 images away), whatever the number of processes,
    and every rank takes a contiguous block of them (``rank_share`` batches): all-gathered in rank order, the
    samples are in the global order, and with one seed per batch (:func:`batch_seed`) they are the same
    samples on any number of processes.
    """
    if n < 0 or batch_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid n={n}, batch_size={batch_size}, rank={rank}, world_size={world_size}")
    num_batches = math.ceil(n / batch_size)
    start = sum(rank_share(num_batches, r, world_size) for r in range(rank))
    count = rank_share(num_batches, rank, world_size)
    return [(k, rank_share(n, k, num_batches)) for k in range(start, start + count)]


def largest_batch(n: int, batch_size: int) -> int:
    """The size of the largest of :func:`rank_batches`' batches: the one shape a compiled sampler sees."""
    return math.ceil(n / math.ceil(n / batch_size)) if n > 0 else batch_size


def batch_seed(seed: int, index: int) -> int:
    """The generator seed of global batch ``index`` (independent streams for every (seed, index) pair)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)


def score_generator(
    metric: SampleQuality,
    generate: Callable[[int, torch.Generator], Tensor],
    n: int,
    batch_size: int,
    device: torch.device,
    seed: int,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
    on_batch: Callable[[int, int, float], None] | None = None,
) -> dict[str, float]:
    """Generate this rank's batches of the ``n`` samples with ``generate(b, generator)`` (images in [-1, 1]),
    feed them to ``metric`` and compute (which all-gathers across ranks under DDP). Each global batch has its
    own generator, seeded from ``(seed, batch index)``, so the samples -- and the scores -- do not depend on
    ``world_size`` (see :func:`rank_batches`). Adds this rank's generation time and rate. ``on_batch(done,
    total, seconds)`` follows every batch (a log's progress where no bar is drawn)."""
    metric.reset()
    batches = rank_batches(n, batch_size, rank, world_size)
    n_local = sum(b for _, b in batches)
    started = time.time()
    after_first = None  # (time, images) once the first batch (compilation, autotuning, warm-up) is done
    done = 0  # images generated so far (a disabled bar counts nothing)
    with tqdm(total=n_local, desc="generating", disable=not progress, leave=False) as bar:
        for i, (index, b) in enumerate(batches):
            gen = torch.Generator(device=device).manual_seed(batch_seed(seed, index))
            images = generate(b, gen)
            metric.update(images.to(device))
            bar.update(b)
            done += b
            if on_batch is not None:
                on_batch(done, n_local, time.time() - started)
            if i == 0 and len(batches) > 1:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                after_first = (time.time(), b)
    if not batches:  # fewer batches than ranks: this rank still takes part in the all-gather, with nothing
        _update_empty(metric, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.time() - started
    scores = metric.compute()
    scores["gen_seconds"] = seconds
    scores["gen_img_per_s"] = n_local / seconds if seconds > 0 and n_local else float("nan")
    # Without the first batch: the steady rate, comparable with a benchmark's warmed-up timing.
    if after_first is not None:
        rest = started + seconds - after_first[0]
        scores["gen_img_per_s_steady"] = (n_local - after_first[1]) / rest if rest > 0 else float("nan")
    else:
        scores["gen_img_per_s_steady"] = scores["gen_img_per_s"]
    return scores


def _update_empty(metric: SampleQuality, device: torch.device) -> None:
    """Empty (0, D) features (and (0, K) logits) of the right width, so the all-gather pads instead of mixing
    a 1-D placeholder with the other ranks' 2-D states."""
    ext = metric.feature_extractor
    if metric.real_features is not None:
        dim = metric.real_features.shape[1]
    elif ext is not None:
        dim = ext.num_features
    else:
        raise RuntimeError("SampleQuality: no real features and no extractor to size empty features by")
    num_logits = ext.num_logits if ext is not None else 0
    metric.update(
        features=torch.zeros(0, dim, device=device),
        logits=torch.zeros(0, num_logits, device=device) if num_logits else None,
    )
