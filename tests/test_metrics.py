"""Tests for diffusion_lab.metrics. Fast (CPU), never downloads: the Inception path uses random weights."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.multiprocessing as mp
from torch import Tensor

from diffusion_lab.metrics import (
    ClassifierFeatures,
    FeatureExtractor,
    InceptionFeatures,
    SampleQuality,
    build_feature_extractor,
    feature_stats,
    frechet_distance,
    images_to_uint8,
    inception_score,
    inception_weights_cache_path,
    kernel_inception_distance,
    load_classifier,
    precision_recall,
    quality,
    real_features_cache_path,
    real_features_cached,
    save_classifier,
    train_classifier,
)

# ----------------------------------------------------------------------------------------------------------------
# references written independently of the implementation
# ----------------------------------------------------------------------------------------------------------------


def ref_frechet_eigh(mu1, s1, mu2, s2):
    """tr((S1 S2)^½) = sum sqrt(eig(S1^½ S2 S1^½)), symmetric PSD eigen decompositions."""
    w, v = np.linalg.eigh(s1)
    sqrt_s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt_s1 @ s2 @ sqrt_s1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def ref_mmd2_unbiased(x, y, degree=3, coef0=1.0, gamma=None):
    """Direct O(n²) loops over the polynomial kernel."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma

    def k(a, b):
        return (gamma * float(a @ b) + coef0) ** degree

    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def ref_precision_recall(real, fake, k):
    """Brute force: radius of each sample = distance to its k-th nearest other sample of its own set."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)

    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    r_real = np.sort(dist(real, real), axis=1)[:, k]  # column 0 is the sample itself
    r_fake = np.sort(dist(fake, fake), axis=1)[:, k]
    d_fr = dist(fake, real)
    precision = np.mean([(d_fr[i] <= r_real).any() for i in range(len(fake))])
    recall = np.mean([(d_fr[:, j] <= r_fake).any() for j in range(len(real))])
    return float(precision), float(recall)


def ref_inception_score(p, splits):
    scores = []
    for chunk in np.array_split(p, splits):
        q = chunk.mean(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(chunk > 0, chunk * (np.log(chunk) - np.log(q)), 0.0).sum(1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------------------------------------------
# FID
# ----------------------------------------------------------------------------------------------------------------


def test_feature_stats_match_numpy():
    x = np.random.default_rng(0).normal(size=(50, 6))
    mu, sigma = feature_stats(torch.from_numpy(x).float())
    np.testing.assert_allclose(mu, x.astype(np.float32).astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(
        sigma, np.cov(x.astype(np.float32).astype(np.float64), rowvar=False), rtol=1e-10
    )
    assert mu.dtype == np.float64 and sigma.dtype == np.float64


def test_fid_self_is_zero_and_grows_with_shift():
    x = np.random.default_rng(1).normal(size=(400, 16))
    mu, sigma = feature_stats(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    fids = []
    for shift in [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]:
        mu2, sigma2 = feature_stats(x + shift)
        fid = frechet_distance(mu, sigma, mu2, sigma2)
        np.testing.assert_allclose(fid, 16 * shift**2, atol=1e-7)  # equal covariances: only the mean term
        fids.append(fid)
    assert all(a < b for a, b in zip(fids, fids[1:]))
    # a scale change (covariance-only difference) also grows monotonically
    scaled = [frechet_distance(mu, sigma, *feature_stats(x * s)) for s in [1.0, 1.5, 2.0, 3.0]]
    assert all(a < b for a, b in zip(scaled, scaled[1:]))


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    a, b = rng.uniform(0.1, 3, size=10), rng.uniform(0.1, 3, size=10)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    np.testing.assert_allclose(frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected, rtol=1e-10)


@pytest.mark.parametrize("n", [200, 20])  # n=20 < D=32: singular covariances
def test_frechet_full_covariance_matches_eigen_reference(n):
    rng = np.random.default_rng(3)
    d = 32
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    y = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 0.3
    m1, s1 = x.mean(0), np.cov(x, rowvar=False)
    m2, s2 = y.mean(0), np.cov(y, rowvar=False)
    fid = frechet_distance(
        torch.from_numpy(m1), torch.from_numpy(s1), m2, s2
    )  # tensors and arrays both accepted
    np.testing.assert_allclose(fid, ref_frechet_eigh(m1, s1, m2, s2), rtol=1e-6)
    if n > d:  # well-conditioned: scipy.linalg.sqrtm agrees too
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
        ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
        np.testing.assert_allclose(fid, ref, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# KID
# ----------------------------------------------------------------------------------------------------------------


def test_kid_matches_direct_reference_on_full_set():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) + 0.4
    mean, std = kernel_inception_distance(real, fake, subsets=3, subset_size=40)
    # a subset of size n is a permutation of the whole set: every subset gives the full-set MMD²
    np.testing.assert_allclose(mean, ref_mmd2_unbiased(fake, real), rtol=1e-9)
    assert std < 1e-9
    mean2, _ = kernel_inception_distance(
        real, fake, subsets=1, subset_size=40, degree=2, coef0=0.5, gamma=0.3
    )
    np.testing.assert_allclose(
        mean2, ref_mmd2_unbiased(fake, real, degree=2, coef0=0.5, gamma=0.3), rtol=1e-9
    )


def test_kid_subsets_follow_torch_fidelity_sampling():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(50, 5)), rng.normal(size=(45, 5)) * 1.3
    mean, std = kernel_inception_distance(real, fake, subsets=4, subset_size=20, seed=7)
    draw = np.random.RandomState(7)
    mmds = []
    for _ in range(4):
        f = fake[draw.choice(45, 20, replace=False)]
        r = real[draw.choice(50, 20, replace=False)]
        mmds.append(ref_mmd2_unbiased(f, r))
    np.testing.assert_allclose([mean, std], [np.mean(mmds), np.std(mmds)], rtol=1e-9)


def torch_fidelity_kid(real, fake, subsets, subset_size, seed=2020, degree=3, coef0=1.0, gamma=None):
    """torch-fidelity's own KID (numpy on the CPU), given (fake, real) as its (input1, input2)."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    out = kid_features_to_metric(
        torch.as_tensor(fake, dtype=torch.float64),
        torch.as_tensor(real, dtype=torch.float64),
        kid_subsets=subsets,
        kid_subset_size=subset_size,
        kid_kernel="poly",
        kid_kernel_poly_degree=degree,
        kid_kernel_poly_gamma=gamma,
        kid_kernel_poly_coef0=coef0,
        rng_seed=seed,
        verbose=False,
    )
    return out["kernel_inception_distance_mean"], out["kernel_inception_distance_std"]


@pytest.mark.parametrize(
    "n_real,n_fake,dim,subsets,subset_size,chunk,kernel",
    [
        (50, 45, 5, 7, 20, 3, {}),  # chunks of 3 do not divide 7 subsets
        (60, 60, 16, 3, 60, 2, {}),  # subset_size = n: every subset is the whole set, std 0
        (400, 250, 64, 11, 200, 4, {"degree": 2, "coef0": 0.5, "gamma": 0.3}),
        (300, 300, 8, 20, 100, None, {}),  # the default chunking; same distribution, KID near 0
    ],
)
def test_kid_matches_torch_fidelity(monkeypatch, n_real, n_fake, dim, subsets, subset_size, chunk, kernel):
    if chunk is not None:
        monkeypatch.setattr(quality, "_subsets_per_chunk", lambda size, d: chunk)
    gen = torch.Generator().manual_seed(n_real + dim)
    real = torch.randn(n_real, dim, generator=gen)
    fake = torch.randn(n_fake, dim, generator=gen) * 1.2 + (0.3 if n_real != n_fake else 0.0)
    mean, std = kernel_inception_distance(real, fake, subsets, subset_size, seed=11, **kernel)
    ref_mean, ref_std = torch_fidelity_kid(real, fake, subsets, subset_size, seed=11, **kernel)
    assert mean == pytest.approx(ref_mean, rel=1e-12)
    # the std of values that agree to ~1e-16 of their size: compared on the scale of the values
    assert std == pytest.approx(ref_std, rel=1e-12, abs=1e-12 * abs(ref_mean))


def test_kid_near_zero_for_same_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same, _ = kernel_inception_distance(real, fake, subsets=20, subset_size=100)
    shifted, _ = kernel_inception_distance(real, fake + 1.0, subsets=20, subset_size=100)
    assert abs(same) < 0.01 < shifted
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(real, fake, subset_size=301)


# ----------------------------------------------------------------------------------------------------------------
# precision / recall
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_matches_brute_force(k):
    rng = np.random.default_rng(7)
    real = rng.normal(size=(80, 5))
    fake = rng.normal(size=(70, 5)) * 0.7 + 0.6
    got = precision_recall(real, fake, k=k, batch_size=16)  # small blocks: exercises the chunking
    assert got == pytest.approx(ref_precision_recall(real, fake, k), abs=1e-12)
    assert 0.0 < got[0] < 1.0 and 0.0 < got[1] < 1.0


def test_precision_recall_identical_and_far_apart():
    x = torch.randn(60, 8, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0, k=3) == (0.0, 0.0)


# ----------------------------------------------------------------------------------------------------------------
# inception score
# ----------------------------------------------------------------------------------------------------------------


def test_inception_score_matches_reference():
    rng = np.random.default_rng(8)
    p = rng.dirichlet(np.full(10, 0.3), size=100)
    mean, std = inception_score(probs=p, splits=5, shuffle=False)
    assert (mean, std) == pytest.approx(ref_inception_score(p, 5), rel=1e-9)
    # logits path: softmax(log p) == p
    assert inception_score(logits=np.log(p), splits=5, shuffle=False) == pytest.approx((mean, std), rel=1e-9)
    # one-hot predictions spread evenly over K classes -> IS = K exactly (0 * log 0 handled)
    onehot = np.eye(10)[np.arange(100) % 10]
    assert inception_score(probs=onehot, splits=1)[0] == pytest.approx(10.0, rel=1e-9)
    # uniform predictions -> IS = 1
    assert inception_score(probs=np.full((20, 4), 0.25), splits=2)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        inception_score(logits=p, probs=p)


# ----------------------------------------------------------------------------------------------------------------
# SampleQuality
# ----------------------------------------------------------------------------------------------------------------


class ToyExtractor(FeatureExtractor):
    """Fixed random projections of the flattened image: features (D=8) and logits (K=5)."""

    def __init__(self, in_dim: int, d: int = 8, k: int = 5):
        super().__init__()
        g = torch.Generator().manual_seed(123)
        self.proj = torch.nn.Linear(in_dim, d)
        self.cls = torch.nn.Linear(d, k)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.num_features, self.num_logits, self.feature_id = d, k, "toy"

    def _features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        f = self.proj(images.flatten(1))
        return f, self.cls(f)


def _toy_images(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 4, 4, generator=g) * 2 - 1 + shift).clamp(-1, 1)


def test_sample_quality_matches_pure_functions():
    ext = ToyExtractor(16)
    real_imgs, fake_imgs = _toy_images(120, 0), _toy_images(90, 1, shift=0.3)
    real_f = ext(real_imgs)
    metric = SampleQuality(ext, kid_subsets=5, kid_subset_size=50, pr_num_samples=None, is_splits=3)
    assert metric._reductions["fake_features"].__name__ == "dim_zero_cat"
    assert metric._reductions["fake_logits"].__name__ == "dim_zero_cat"
    metric.set_real_features(real_f)
    for chunk in fake_imgs.split(32):
        metric.update(chunk)
    out = metric.compute()
    fake_f, fake_logits = ext.features_and_logits(fake_imgs)
    assert set(out) == {"fid", "kid_mean", "kid_std", "precision", "recall", "is_mean", "is_std"}
    mu_r, s_r = feature_stats(real_f)
    mu_f, s_f = feature_stats(fake_f)
    assert out["fid"] == pytest.approx(frechet_distance(mu_r, s_r, mu_f, s_f), rel=1e-6)
    assert (out["kid_mean"], out["kid_std"]) == pytest.approx(
        kernel_inception_distance(real_f, fake_f, subsets=5, subset_size=50), rel=1e-6
    )
    # PR on equal-size sets: 90 real drawn with the metric's seed
    perm = torch.randperm(120, generator=torch.Generator().manual_seed(metric.seed))[:90]
    assert (out["precision"], out["recall"]) == pytest.approx(precision_recall(real_f[perm], fake_f, k=3))
    assert (out["is_mean"], out["is_std"]) == pytest.approx(
        inception_score(logits=fake_logits, splits=3), rel=1e-6
    )

    # real features survive reset(); precomputed features through update(features=...) give the same result
    metric.reset()
    metric.update(features=fake_f, logits=fake_logits)
    assert metric.compute() == pytest.approx(out, rel=1e-6)
    assert "real_features" not in metric.state_dict()  # non-persistent: never in checkpoints
    assert not any(k.startswith("_extractor") for k in metric.state_dict())


def test_sample_quality_merges_like_ddp_cat():
    """Two 'ranks' each holding half of the generated samples merge (cat) into the single-process result."""
    ext = ToyExtractor(16)
    real_f = ext(_toy_images(100, 0))
    fake = _toy_images(80, 1, shift=0.2)
    kw = dict(kid_subsets=3, kid_subset_size=40, pr_num_samples=None, is_splits=2)
    whole = SampleQuality(ext, real_f, **kw)
    whole.update(fake)
    r0, r1 = SampleQuality(ext, real_f, **kw), SampleQuality(ext, real_f, **kw)
    r0.update(fake[:40])
    r1.update(fake[40:])
    r1.merge_state(r0)  # the incoming state goes first: [rank 0, rank 1], as all_gather orders them
    assert r1.compute() == pytest.approx(whole.compute(), rel=1e-6)


def _ddp_worker(rank: int, world: int, port: int, real_f: Tensor, fake_f: Tensor, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        metric = SampleQuality(None, real_f, kid_subsets=3, kid_subset_size=40, pr_num_samples=None)
        metric.update(features=fake_f.chunk(world)[rank])
        q.put((rank, metric.compute()))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # two gloo processes: ~12 s on 2 cores
def test_sample_quality_ddp_gloo_every_rank_gets_global_result():
    g = torch.Generator().manual_seed(0)
    real_f, fake_f = torch.randn(100, 6, generator=g), torch.randn(80, 6, generator=g) + 0.3
    ref = SampleQuality(None, real_f, kid_subsets=3, kid_subset_size=40, pr_num_samples=None)
    ref.update(features=fake_f)
    expected = ref.compute()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.start_processes(
        _ddp_worker, args=(2, port, real_f, fake_f, q), nprocs=2, join=True, start_method="spawn"
    )
    results = dict(q.get() for _ in range(2))
    for rank in (0, 1):
        assert results[rank] == pytest.approx(expected, rel=1e-6)


def test_sample_quality_errors():
    metric = SampleQuality(ToyExtractor(16))
    metric.update(_toy_images(10, 0))
    with pytest.raises(RuntimeError, match="set_real_features"):
        metric.compute()
    with pytest.raises(ValueError, match="D=3"):
        metric.set_real_features(torch.randn(10, 3))


# ----------------------------------------------------------------------------------------------------------------
# Inception (random weights, never downloads)
# ----------------------------------------------------------------------------------------------------------------


def test_inception_end_to_end_random_weights(random_inception_weights, no_download):
    from torchmetrics.image.fid import NoTrainInceptionV3

    ext = build_feature_extractor("inception", str(random_inception_weights))
    assert isinstance(ext, InceptionFeatures) and ext.num_features == 2048 and not ext.training
    g = torch.Generator().manual_seed(0)
    gray = torch.rand(2, 1, 28, 28, generator=g) * 2 - 1
    rgb = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    for imgs in (gray, rgb):
        feats, logits = ext.features_and_logits(imgs)
        assert feats.shape == (2, 2048) and feats.dtype == torch.float32 and torch.isfinite(feats).all()
        assert logits.shape == (2, 1008) and torch.isfinite(logits).all()
    assert feats.abs().sum() > 0
    # the same network through torchmetrics' FID wrapper (TF-compatible resize) gives the same features
    tm = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(random_inception_weights), antialias=False)
    torch.testing.assert_close(tm(images_to_uint8(rgb)), ext(rgb), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        tm(images_to_uint8(gray).expand(-1, 3, -1, -1)), ext(gray), rtol=1e-4, atol=1e-5
    )


def test_inception_uses_hub_cache_without_downloading(random_inception_weights, no_download):
    cached = inception_weights_cache_path()
    assert str(cached).startswith(str(no_download))
    cached.parent.mkdir(parents=True)
    os.symlink(random_inception_weights, cached)
    ext = InceptionFeatures(with_logits=False, feature=768)
    assert ext.weights_path == str(cached) and not ext.provides_logits
    assert ext(torch.zeros(1, 3, 8, 8)).shape == (1, 768)


def test_missing_inception_weights_message(no_download):
    expected = no_download / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    with pytest.raises(FileNotFoundError) as ei:
        InceptionFeatures()
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(expected) in msg
    assert "metrics.inception_weights=PATH" in msg
    assert "https://github.com/toshas/torch-fidelity/releases/download/" in msg
    with pytest.raises(FileNotFoundError, match="metrics.inception_weights"):
        InceptionFeatures(weights_path=no_download / "nope.pth")


def test_images_to_uint8_rounds_like_png():
    x = torch.tensor([-1.0, -1.5, 1.0, 2.0, 0.0, -0.999])
    assert images_to_uint8(x).tolist() == [0, 0, 255, 255, 128, 0]
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(images_to_uint8(u.float() / 127.5 - 1), u)  # exact round trip of 8-bit images


# ----------------------------------------------------------------------------------------------------------------
# real-feature cache
# ----------------------------------------------------------------------------------------------------------------


def test_real_features_cache_computes_once(tmp_path):
    calls = []
    feats = torch.randn(20, 4)

    def compute():
        calls.append(1)
        return feats

    key = dict(dataset="mnist", split="train", resolution=28, feature="toy", n=20)
    a = real_features_cached(tmp_path, key, compute)
    b = real_features_cached(tmp_path, dict(reversed(list(key.items()))), compute)  # key order irrelevant
    assert len(calls) == 1 and torch.equal(a, feats) and torch.equal(b, feats)
    path = real_features_cache_path(tmp_path, key)
    assert path.is_file()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["key"] == key and meta["shape"] == [20, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path.with_suffix(".json").name])
    real_features_cached(tmp_path, {**key, "n": 10}, compute)  # another key -> another file
    assert len(calls) == 2
    path.write_bytes(b"garbage")  # unreadable cache file -> recomputed (with a warning) and rewritten
    with pytest.warns(UserWarning, match="unreadable"):
        c = real_features_cached(tmp_path, key, compute)
    assert len(calls) == 3 and torch.equal(c, feats)
    assert torch.equal(real_features_cached(tmp_path, key, compute), feats) and len(calls) == 3


# ----------------------------------------------------------------------------------------------------------------
# classifier
# ----------------------------------------------------------------------------------------------------------------


def _synthetic_set(n, channels, size, seed):
    """4 classes: a bright square in one of the four quadrants, plus noise; images in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    x = torch.randn(n, channels, size, size, generator=g) * 0.3 - 0.5
    h = size // 2
    for c in range(4):
        i, j = divmod(c, 2)
        x[labels == c, :, i * h + 2 : i * h + h - 2, j * h + 2 : j * h + h - 2] += 1.2
    return x.clamp(-1, 1), labels


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_classifier_trains_and_round_trips(tmp_path, channels, size):
    xtr, ytr = _synthetic_set(256, channels, size, 0)
    xte, yte = _synthetic_set(128, channels, size, 1)
    model, acc = train_classifier(xtr, ytr, xte, yte, epochs=3, batch_size=32, device="cpu")
    assert acc > 0.9
    assert model.features(xte[:5]).shape == (5, 128)
    path = save_classifier(
        model, tmp_path / "clf" / "classifier.pt", meta={"dataset": "synthetic", "acc": acc}
    )
    loaded = load_classifier(path)
    assert loaded.meta == {"dataset": "synthetic", "acc": acc}
    with torch.no_grad():
        torch.testing.assert_close(loaded.features(xte), model.features(xte), rtol=0, atol=0)
    ext = build_feature_extractor("classifier", str(path))
    assert isinstance(ext, ClassifierFeatures) and ext.num_features == 128 and ext.num_logits == 4
    feats, logits = ext.features_and_logits(xte)
    torch.testing.assert_close(feats, model.features(xte), rtol=0, atol=0)
    assert (logits.argmax(1) == yte).float().mean() > 0.9
    if channels == 3:  # grayscale input is repeated to RGB
        assert ext(xte[:2, :1]).shape == (2, 128)
    # end to end: the classifier as the SampleQuality feature network, with the domain classifier score
    metric = SampleQuality(ext, ext(xtr), kid_subset_size=50, is_splits=2)
    metric.update(xte)
    out = metric.compute()
    assert out["fid"] >= 0 and 0 <= out["precision"] <= 1 and out["is_mean"] > 1.0


def test_load_classifier_rejects_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_classifier(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="not a diffusion_lab classifier checkpoint"):
        load_classifier(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="not a diffusion_lab classifier checkpoint"):
        load_classifier(other)
    with pytest.raises(ValueError, match="classifier"):
        build_feature_extractor("classifier", None)
    with pytest.raises(ValueError, match="unknown feature extractor"):
        build_feature_extractor("vgg", None)
