"""Sample-quality metrics: FID, KID, precision/recall (Kynkäänniemi et al. 2019), Inception Score.

The numerical cores are torch-fidelity's (``fid_features_to_statistics`` / ``fid_statistics_to_metric``,
``calculate_precision_recall_part`` (chunked k-NN manifolds), ``isc_features_to_metric``), so numbers match
``torch_fidelity.calculate_metrics`` bit for bit given the same features. Hand-written here, because neither
torch-fidelity nor torchmetrics offers it: KID on the features' device (torch-fidelity's own runs in numpy on
the CPU; ours draws the same subsets and matches it to float64 rounding), array/tensor plumbing in float64, the
``SampleQuality`` torchmetrics.Metric that accumulates generated features (DDP-synced ``cat`` states) against
*precomputed* real features with any feature extractor, and the on-disk real-feature cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from diffusion_lab.io import cached
from diffusion_lab.metrics.feature_nets import FeatureExtractor

__all__ = [
    "SampleQuality",
    "feature_stats",
    "frechet_distance",
    "inception_score",
    "kernel_inception_distance",
    "precision_recall",
    "real_features_cache_path",
    "real_features_cached",
]

# Images per feature-network call: generated and real images go through the feature network (Inception upsamples
# to 299x299) in chunks of this size, whatever batch they were generated or loaded in, so a large generation batch
# does not multiply the feature network's memory.
EXTRACT_BATCH_SIZE = 256

# Memory for one batch of KID subsets: the gathered subsets and one kernel matrix per subset, in float64.
KID_CHUNK_BYTES = 256 * 2**20

ArrayLike = np.ndarray | Tensor


def _as_tensor64(x: ArrayLike, name: str, ndim: int = 2) -> Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, Tensor) else x.detach()
    t = t.to(torch.float64)
    if t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def _as_numpy64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------------
# pure functions on feature matrices
# ----------------------------------------------------------------------------------------------------------------


def feature_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, float64 numpy (torch-fidelity's code)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    f = _as_tensor64(features, "features").cpu()
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    stats = fid_features_to_statistics(f)
    return stats["mu"], np.atleast_2d(stats["sigma"])


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """||mu1 - mu2||² + tr(S1 + S2 - 2 (S1 S2)^½) in float64.

    torch-fidelity's formulation: tr((S1 S2)^½) = sum_i sqrt(lambda_i(S1 S2)) (real part of complex square roots).
    The eigenvalues of S1 S2 equal those of the PSD matrix S1^½ S2 S1^½, so this is exact for PSD inputs and,
    unlike ``scipy.linalg.sqrtm``, never fails or produces large imaginary parts on singular (N < D) covariances.
    """
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    m1, m2 = _as_numpy64(mu1).reshape(-1), _as_numpy64(mu2).reshape(-1)
    s1, s2 = np.atleast_2d(_as_numpy64(sigma1)), np.atleast_2d(_as_numpy64(sigma2))
    if m1.shape != m2.shape or s1.shape != s2.shape or s1.shape != (m1.size, m1.size):
        raise ValueError(f"shape mismatch: mu {m1.shape}/{m2.shape}, sigma {s1.shape}/{s2.shape}")
    out = fid_statistics_to_metric({"mu": m1, "sigma": s1}, {"mu": m2, "sigma": s2}, verbose=False)
    return float(out["frechet_inception_distance"])


def kernel_inception_distance(
    f_real: ArrayLike,
    f_fake: ArrayLike,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    coef0: float = 1.0,
    gamma: float | None = None,
    seed: int = 2020,
) -> tuple[float, float]:
    """KID: mean and (population) std over ``subsets`` random subsets (without replacement) of the unbiased MMD²
    with kernel k(x, y) = (gamma x·y + coef0)^degree, gamma = 1/D by default (Binkowski et al. 2018).

    The numbers are torch-fidelity's ``kid_features_to_metric`` fed (fake, real) as its (input1, input2), i.e.
    ``calculate_metrics``' (same subsets, same estimator), but computed in float64 on the features' device,
    ``_subsets_per_chunk`` subsets per batched matrix product. torch-fidelity's loop runs in numpy on the CPU,
    subset by subset, where the evaluations sharing a GPU host compete for the cores; here it is a few batched
    products on the device that already holds the features.
    """
    real, fake = _as_tensor64(f_real, "f_real"), _as_tensor64(f_fake, "f_fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    if subset_size > min(len(real), len(fake)) or subset_size < 2:
        raise ValueError(
            f"KID subset_size={subset_size} must be in [2, min(n_real, n_fake)={min(len(real), len(fake))}]"
        )
    fake = fake.to(real.device)
    gamma = 1.0 / real.shape[1] if gamma is None else gamma
    fake_idx, real_idx = _kid_subset_indices(len(fake), len(real), int(subsets), int(subset_size), seed)
    fake_idx, real_idx = fake_idx.to(real.device), real_idx.to(real.device)
    mmds = torch.empty(len(fake_idx), dtype=torch.float64, device=real.device)
    chunk = _subsets_per_chunk(int(subset_size), real.shape[1])
    for i in range(0, len(mmds), chunk):
        x, y = fake[fake_idx[i : i + chunk]], real[real_idx[i : i + chunk]]  # (c, m, D) each
        mmds[i : i + chunk] = _poly_mmd2_unbiased(x, y, degree, gamma, coef0)
    values = mmds.cpu().numpy()
    return float(np.mean(values)), float(np.std(values))


def _subsets_per_chunk(subset_size: int, dim: int) -> int:
    """How many subsets go through one batched product so that it stays within ``KID_CHUNK_BYTES``."""
    per_subset = 8 * (subset_size * subset_size + 2 * subset_size * dim)  # (m, m) kernel + two (m, D) subsets
    return max(1, KID_CHUNK_BYTES // per_subset)


def _kid_subset_indices(
    n_fake: int, n_real: int, subsets: int, size: int, seed: int
) -> tuple[Tensor, Tensor]:
    """(subsets, size) fake and real row indices, drawn as torch-fidelity draws them: one RandomState(seed), each
    subset's fake rows, then its real rows."""
    rng = np.random.RandomState(seed)
    fake_idx, real_idx = np.empty((subsets, size), np.int64), np.empty((subsets, size), np.int64)
    for i in range(subsets):
        fake_idx[i] = rng.choice(n_fake, size, replace=False)
        real_idx[i] = rng.choice(n_real, size, replace=False)
    return torch.from_numpy(fake_idx), torch.from_numpy(real_idx)


def _poly_mmd2_unbiased(x: Tensor, y: Tensor, degree: int, gamma: float, coef0: float) -> Tensor:
    """(c,) unbiased MMD² between the c pairs of (m, D) sets x[i], y[i] under k(a, b) = (gamma a·b + coef0)^degree:
    the mean of k over distinct pairs within x and within y, minus twice its mean over all x-y pairs."""
    m = x.shape[1]

    def kernel_sum(a: Tensor, b: Tensor, drop_diagonal: bool) -> Tensor:
        # (c, m, m), in place and one kernel at a time: the chunk's memory budget holds one
        k = torch.bmm(a, b.mT).mul_(gamma).add_(coef0).pow_(degree)
        total = k.sum((1, 2))
        return total - k.diagonal(dim1=1, dim2=2).sum(1) if drop_diagonal else total

    within = kernel_sum(x, x, True) + kernel_sum(y, y, True)
    return within / (m * (m - 1)) - 2 * kernel_sum(x, y, False) / (m * m)


def precision_recall(
    f_real: ArrayLike, f_fake: ArrayLike, k: int = 3, batch_size: int = 10000
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    precision = fraction of fake samples inside the union of real k-NN balls (ball radius = distance to the
    k-th nearest *other* real sample); recall = fraction of real samples inside the union of fake k-NN balls.
    Distances in float64 on the features' device, ``batch_size`` x N blocks at a time (torch-fidelity's
    ``calculate_precision_recall_part``). Use equal set sizes: the radii shrink with N.
    """
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    real, fake = _as_tensor64(f_real, "f_real"), _as_tensor64(f_fake, "f_fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    if k < 1 or k >= min(len(real), len(fake)):
        raise ValueError(f"k={k} must be in [1, min(n_real, n_fake) - 1 = {min(len(real), len(fake)) - 1}]")
    fake = fake.to(real.device)
    precision, recall = calculate_precision_recall_part(fake, real, neighborhood=k, batch_size=batch_size)
    # torch-fidelity averages in float32; both are fractions m/N, so snap them to the exact value
    return round(precision * len(fake)) / len(fake), round(recall * len(real)) / len(real)


def inception_score(
    logits: ArrayLike | None = None,
    probs: ArrayLike | None = None,
    splits: int = 10,
    shuffle: bool = True,
    seed: int = 2020,
) -> tuple[float, float]:
    """Inception Score mean/std over ``splits`` chunks: exp(E_x KL(p(y|x) || p(y))) (torch-fidelity's code).

    Give exactly one of ``logits`` (N, K) or ``probs`` (N, K, rows summing to 1). ``shuffle`` permutes the
    samples with ``seed`` first (as torch-fidelity does), which matters when samples are ordered by class.
    """
    from torch_fidelity.metric_isc import isc_features_to_metric

    if (logits is None) == (probs is None):
        raise ValueError("give exactly one of logits or probs")
    if logits is not None:
        x = _as_tensor64(logits, "logits").cpu()
    else:
        p = _as_tensor64(probs, "probs").cpu()
        # softmax(log p) == p for normalised rows; the clamp keeps 0 * log 0 terms at 0 instead of nan
        x = p.clamp_min(torch.finfo(torch.float64).tiny).log()
    if not 1 <= splits <= x.shape[0]:
        raise ValueError(f"splits={splits} must be in [1, N={x.shape[0]}]")
    out = isc_features_to_metric(x, splits=int(splits), shuffle=shuffle, rng_seed=seed)
    return float(out["inception_score_mean"]), float(out["inception_score_std"])


# ----------------------------------------------------------------------------------------------------------------
# torchmetrics.Metric
# ----------------------------------------------------------------------------------------------------------------


class SampleQuality(Metric):
    """FID / KID / precision-recall (/ IS) of generated images against precomputed real features.

    ``update(fake_images)`` runs the feature extractor ([-1, 1] images) and accumulates features (and logits
    when the extractor provides them) in list states with ``dist_reduce_fx="cat"``: under DDP every rank
    generates its share, ``compute()`` all-gathers them and every rank computes the same numbers (seeded
    subsets), no rank-0-only code path. Real features come from ``set_real_features`` (call it on every rank,
    e.g. with :func:`real_features_cached`); they are a non-persistent buffer, kept across ``reset()`` and
    not written to checkpoints. The extractor is deliberately not a registered submodule (its weights stay out
    of Lightning checkpoints and out of ``.train()``/``.half()``); it follows the images' device on ``update``.

    ``compute()`` -> {fid, kid_mean, kid_std, precision, recall[, is_mean, is_std]} as Python floats.
    KID uses ``subset_size = min(kid_subset_size, n_real, n_fake)``; precision/recall use the same number of
    real and fake samples, ``min(n_real, n_fake, pr_num_samples)``, drawn with ``seed``.
    """

    is_differentiable = False
    higher_is_better: bool | None = None
    full_state_update = False

    fake_features: list[Tensor]
    fake_logits: list[Tensor]

    def __init__(
        self,
        feature_extractor: FeatureExtractor | None,
        real_features: Tensor | None = None,
        *,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        pr_k: int = 3,
        pr_num_samples: int | None = 10000,
        pr_batch_size: int = 10000,
        is_splits: int = 10,
        extract_batch_size: int = EXTRACT_BATCH_SIZE,
        seed: int = 2020,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "_extractor", feature_extractor)  # not registered: see class docstring
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.pr_k = pr_k
        self.pr_num_samples = pr_num_samples
        self.pr_batch_size = pr_batch_size
        self.is_splits = is_splits
        self.extract_batch_size = extract_batch_size
        self.seed = seed
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_logits", default=[], dist_reduce_fx="cat")
        self.register_buffer("real_features", None, persistent=False)
        self._real_stats: tuple[np.ndarray, np.ndarray] | None = None
        if real_features is not None:
            self.set_real_features(real_features)

    @property
    def feature_extractor(self) -> FeatureExtractor | None:
        return self._extractor

    def set_real_features(self, features: Tensor) -> None:
        """(N, D) real features (any device/dtype); their mean/covariance are computed once here."""
        f = features.detach() if isinstance(features, Tensor) else torch.as_tensor(np.asarray(features))
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"real features must be (N >= 2, D), got {tuple(f.shape)}")
        ext = self._extractor
        if ext is not None and ext.num_features and f.shape[1] != ext.num_features:
            raise ValueError(f"real features have D={f.shape[1]}, the extractor gives D={ext.num_features}")
        self.real_features = f.to(self.device, torch.float32)
        self._real_stats = feature_stats(f)

    @torch.no_grad()
    def update(
        self,
        fake_images: Tensor | None = None,
        *,
        features: Tensor | None = None,
        logits: Tensor | None = None,
    ) -> None:
        """Accumulate a batch of generated images in [-1, 1], (B, C, H, W), through the extractor -- or, with
        ``features=`` (B, D) (and optionally ``logits=`` (B, K)), precomputed features."""
        if (fake_images is None) == (features is None):
            raise ValueError("give either fake_images or features=")
        if features is not None:
            self._append(features, logits)
            return
        ext = self._extractor
        if ext is None:
            raise RuntimeError(
                "SampleQuality was built without a feature extractor; use update(features=...)"
            )
        if ext.device != fake_images.device:
            ext.to(fake_images.device)
        for chunk in fake_images.split(self.extract_batch_size):
            feats, lg = ext.features_and_logits(chunk)
            self._append(feats, lg)

    def update_features(self, features: Tensor, logits: Tensor | None = None) -> None:
        """Shorthand for ``update(features=features, logits=logits)``."""
        self.update(features=features, logits=logits)

    def _append(self, feats: Tensor, logits: Tensor | None) -> None:
        if feats.ndim != 2:
            raise ValueError(f"features must be (B, D), got {tuple(feats.shape)}")
        self.fake_features.append(feats.detach().float())
        if logits is not None:
            if logits.shape[0] != feats.shape[0]:
                raise ValueError("features and logits have different batch sizes")
            self.fake_logits.append(logits.detach().float())

    def compute(self) -> dict[str, float]:
        if self.real_features is None or self._real_stats is None:
            raise RuntimeError("SampleQuality: call set_real_features() before compute()")
        if isinstance(self.fake_features, list) and len(self.fake_features) == 0:
            raise RuntimeError("SampleQuality: no generated samples (call update() first)")
        fake = dim_zero_cat(self.fake_features).to(torch.float64)
        real = self.real_features.to(fake.device, torch.float64)
        n_fake, n_real = fake.shape[0], real.shape[0]
        if n_fake < 2:
            raise RuntimeError(f"SampleQuality: need at least 2 generated samples, got {n_fake}")
        if fake.shape[1] != real.shape[1]:
            raise RuntimeError(f"feature dims differ: fake {fake.shape[1]} vs real {real.shape[1]}")

        mu_f, sigma_f = feature_stats(fake)
        mu_r, sigma_r = self._real_stats
        out: dict[str, float] = {"fid": frechet_distance(mu_r, sigma_r, mu_f, sigma_f)}

        kid_size = min(self.kid_subset_size, n_real, n_fake)
        out["kid_mean"], out["kid_std"] = kernel_inception_distance(
            real, fake, subsets=self.kid_subsets, subset_size=kid_size, seed=self.seed
        )

        n_pr = min(n_real, n_fake, self.pr_num_samples or n_fake)
        if n_pr > self.pr_k:
            gen = torch.Generator().manual_seed(self.seed)
            real_pr = (
                real if n_pr == n_real else real[torch.randperm(n_real, generator=gen)[:n_pr].to(real.device)]
            )
            fake_pr = (
                fake if n_pr == n_fake else fake[torch.randperm(n_fake, generator=gen)[:n_pr].to(fake.device)]
            )
            out["precision"], out["recall"] = precision_recall(
                real_pr, fake_pr, k=self.pr_k, batch_size=self.pr_batch_size
            )
        else:
            out["precision"] = out["recall"] = float("nan")

        has_logits = not (isinstance(self.fake_logits, list) and len(self.fake_logits) == 0)
        if has_logits:
            logits = dim_zero_cat(self.fake_logits)
            if logits.numel() and logits.ndim == 2 and logits.shape[0] == n_fake:
                out["is_mean"], out["is_std"] = inception_score(
                    logits=logits, splits=min(self.is_splits, n_fake), seed=self.seed
                )
        return out


# ----------------------------------------------------------------------------------------------------------------
# real-feature cache
# ----------------------------------------------------------------------------------------------------------------


def _key_json(key: Mapping[str, Any]) -> str:
    return json.dumps(dict(key), sort_keys=True, default=str, separators=(",", ":"))


def real_features_cache_path(cache_dir: str | os.PathLike, key: Mapping[str, Any]) -> Path:
    """``cache_dir/real-features-<sha256(canonical json of key)[:20]>.pt`` (a ``.json`` with the key beside it)."""
    digest = hashlib.sha256(_key_json(key).encode()).hexdigest()[:20]
    return Path(cache_dir).expanduser() / f"real-features-{digest}.pt"


def real_features_cached(
    cache_dir: str | os.PathLike, key: Mapping[str, Any], compute_fn: Callable[[], Tensor]
) -> Tensor:
    """Real features for ``key`` (e.g. dict(dataset, split, resolution, feature=extractor.feature_id, n)):
    loaded from ``cache_dir`` on a hit, else ``compute_fn()`` -> saved atomically (temp file + os.replace) next
    to a human-readable JSON of the key. Returns a CPU tensor. An unreadable cache file is recomputed."""
    return cached(
        real_features_cache_path(cache_dir, key),
        key,
        lambda: _feature_matrix(compute_fn()),
        problem=lambda f: None if isinstance(f, Tensor) and f.ndim == 2 else "does not hold a 2-D tensor",
        describe=lambda f: {"shape": list(f.shape), "dtype": str(f.dtype)},
        what="real-feature cache",
    )


def _feature_matrix(feats: Any) -> Tensor:
    """``feats`` as a contiguous CPU (N, D) tensor; anything else is an error."""
    if not isinstance(feats, Tensor) or feats.ndim != 2:
        raise ValueError(
            f"compute_fn must return an (N, D) tensor, got {getattr(feats, 'shape', type(feats))}"
        )
    return feats.detach().cpu().contiguous()
