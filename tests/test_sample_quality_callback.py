"""SampleQualityCallback: FID & co. during training, the best-FID checkpoint, and the same numbers on any number
of processes (the n samples are cut into fixed, separately seeded batches, contiguous per rank)."""

from __future__ import annotations

import csv
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import small_train_cfg
from diffusion_lab.build import build_module
from diffusion_lab.callbacks import SampleQualityCallback
from diffusion_lab.metrics.classifier import SmallClassifier, save_classifier
from diffusion_lab.metrics.evaluation import largest_batch, rank_batches, rank_share
from diffusion_lab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

SCORES = ("fid", "kid_mean", "kid_std", "precision", "recall", "is_mean", "is_std")


def logged(csv_path: Path | str, key: str) -> dict[int, float]:
    """``{global step: value}`` of one metric in a CSVLogger file (whose ``step`` column is the index of the
    last optimizer step taken, i.e. global step - 1)."""
    with open(csv_path) as f:
        return {int(r["step"]) + 1: float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def save_tiny_classifier(path: Path, image_size: int) -> Path:
    torch.manual_seed(0)
    return save_classifier(SmallClassifier(1, 10, image_size, width=4, feature_dim=8), path)


@pytest.fixture(scope="module")
def classifier28(tmp_path_factory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("features") / "classifier.pt", 28)


def metric_overrides(classifier: Path, cache: Path, **settings) -> list[str]:
    values = {"features": classifier, "cache_dir": cache, "n": 8, "n_real": 16, "batch_size": 4, **settings}
    return ["callbacks=with_metrics", *(f"callbacks.sample_quality.{k}={v}" for k, v in values.items())]


# ------------------------------------------------------------------------------------ the split over ranks
@pytest.mark.parametrize(
    "n,batch_size", [(10, 3), (8, 4), (3, 4), (1000, 500), (7, 1), (10000, 512), (10001, 500)]
)
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_rank_batches_are_the_global_batches_in_rank_order(n, batch_size, world_size):
    single = rank_batches(n, batch_size)
    sizes = [b for _, b in single]
    # as many batches as batch_size asks for, balanced: sizes differ by at most one, the larger first, none
    # over batch_size, and the largest is largest_batch (the one shape a compiled sampler is given)
    assert len(sizes) == -(-n // batch_size) and sum(sizes) == n
    assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1
    assert max(sizes) <= batch_size and max(sizes) == largest_batch(n, batch_size)
    per_rank = [rank_batches(n, batch_size, r, world_size) for r in range(world_size)]
    # concatenated in rank order (what the all-gather does) they are the one-process batches, in order
    assert [b for batches in per_rank for b in batches] == single
    assert [len(b) for b in per_rank] == [rank_share(len(single), r, world_size) for r in range(world_size)]
    assert sum(size for batches in per_rank for _, size in batches) == n


# ------------------------------------------------------------------ same scores on 2 gloo processes as on 1
class FakeModule:
    """What the callback uses of the DiffusionModule: a deterministic ``generate`` driven by the generator."""

    def __init__(self, num_classes: int | None = 3):
        self.device = torch.device("cpu")
        self.num_classes = num_classes
        self.generated = 0

    def generate(self, n, batch_size, generator, labels=None, on_device=False):
        x = torch.rand(n, 1, 8, 8, generator=generator) * 2 - 1
        if labels is not None:
            x = x + 0.2 * labels.view(-1, 1, 1, 1).float() - 0.2
        self.generated += n
        return x.clamp(-1, 1)


class FakeData:
    name, root, data_shape = "fake8", None, (1, 8, 8)

    def real_images(self, split: str, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(99)
        return (torch.randn(n, 1, 8, 8, generator=g) * 0.5).clamp(-1, 1)


def fake_trainer(rank: int, barrier) -> SimpleNamespace:
    strategy = SimpleNamespace(root_device=torch.device("cpu"), barrier=lambda name=None: barrier())
    return SimpleNamespace(strategy=strategy, is_global_zero=rank == 0, datamodule=FakeData())


# (n, batch_size): 4 batches (2 + 2 on 2 ranks); a single batch (rank 1 generates nothing; n <= k: no P&R)
CASES = [(10, 3), (3, 4)]


def scores_of(clf: Path, cache: Path, rank: int, world: int, barrier) -> list[tuple[dict, int]]:
    out = []
    for n, batch_size in CASES:
        cb = SampleQualityCallback(
            n=n, n_real=12, batch_size=batch_size, seed=5, features=str(clf), cache_dir=str(cache)
        )
        cb.setup(fake_trainer(rank, barrier), FakeModule(), "fit")
        module = FakeModule()
        scores = cb.score(module, rank, world)
        out.append(({k: scores[k] for k in SCORES if k in scores}, module.generated))
    return out


def _gloo_worker(rank: int, world: int, port: int, clf: str, cache: str, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        q.put((rank, scores_of(Path(clf), Path(cache), rank, world, dist.barrier)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two gloo processes: ~14 s on 2 cores
def test_scores_on_two_processes_equal_one_process(tmp_path):
    clf = save_tiny_classifier(tmp_path / "clf8.pt", 8)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = mp.get_context("spawn").SimpleQueue()
    # a fresh cache: rank 0 fills it, rank 1 reads it after the barrier
    mp.start_processes(
        _gloo_worker,
        args=(2, port, str(clf), str(tmp_path / "cache"), q),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    results = dict(q.get() for _ in range(2))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    single = scores_of(clf, tmp_path / "cache1", 0, 1, lambda: None)
    for case, (n, batch_size) in enumerate(CASES):
        expected, generated = single[case]
        assert set(expected) == set(SCORES) and generated == n
        shares = [results[r][case][1] for r in (0, 1)]
        assert sum(shares) == n and shares == [
            sum(b for _, b in rank_batches(n, batch_size, r, 2)) for r in (0, 1)
        ]
        for rank in (0, 1):  # every rank computes the global numbers, equal to one process's
            got = results[rank][case][0]
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-12, nan_ok=True), (case, rank)
    assert shares == [3, 0]  # the last case: rank 1 had no batch and still took part in the gather


def test_bad_settings_name_the_option():
    with pytest.raises(ValueError, match=r"callbacks\.sample_quality\.n=1 is invalid"):
        SampleQualityCallback(n=1)
    with pytest.raises(ValueError, match=r"callbacks\.sample_quality\.every_n_steps=0\.5 is invalid"):
        SampleQualityCallback(every_n_steps=0.5)
    cb = SampleQualityCallback(features="/nonexistent/classifier.pt")
    with pytest.raises(FileNotFoundError, match=r"^callbacks\.sample_quality\.features='/nonexistent"):
        cb.setup(fake_trainer(0, lambda: None), FakeModule(), "fit")


def test_due_first_validation_then_every_n_steps():
    cb = SampleQualityCallback(every_n_steps=4)
    assert not cb.due(0)
    assert cb.due(2)  # the first validation of a run, whatever its step
    cb._last_step = 2
    assert not cb.due(3) and cb.due(4) and cb.due(5)
    cb._last_step = 4
    assert not cb.due(6) and cb.due(8)
    cb._last_step = 5  # validations off the multiples: the first at or after the next multiple
    assert not cb.due(7) and cb.due(9)


# --------------------------------------------------------------------------- logged names by feature network
class LoggingModule(FakeModule):
    def __init__(self):
        super().__init__()
        self.logged: dict[str, float] = {}

    def log(self, name, value, **kwargs):
        self.logged[name] = value


class FakeInception:
    """An extractor of kind 'inception' (the real one needs its weights file): random 3-d features."""

    kind, feature_id, device, num_features, num_logits = (
        "inception",
        "fake-inception",
        torch.device("cpu"),
        3,
        0,
    )

    def to(self, device):
        return self

    def features_and_logits(self, x):
        return x.flatten(1)[:, :3].float(), None


@pytest.mark.parametrize("kind", ["classifier", "inception"])
def test_scores_are_logged_under_the_feature_networks_names(kind, tmp_path, monkeypatch):
    import diffusion_lab.callbacks.sample_quality as sample_quality

    features = "inception"
    if kind == "classifier":
        features = str(save_tiny_classifier(tmp_path / "clf8.pt", 8))
    else:
        monkeypatch.setattr(sample_quality, "build_extractor", lambda settings: FakeInception())
    cb = SampleQualityCallback(n=6, n_real=12, batch_size=3, features=features, cache_dir=str(tmp_path / "c"))
    cb.setup(fake_trainer(0, lambda: None), FakeModule(), "fit")
    module = LoggingModule()
    trainer = SimpleNamespace(global_step=2, sanity_checking=False, global_rank=0, world_size=1)
    cb.on_validation_epoch_start(trainer, module)
    fid, kid = ("metrics/fd_classifier", "metrics/kd_classifier_mean")
    if kind == "inception":
        fid, kid = "metrics/fid", "metrics/kid_mean"
    assert {fid, kid, "metrics/precision", "metrics/eval_seconds"} <= set(module.logged)
    assert (kind == "classifier") == ("metrics/fid" not in module.logged)
    assert not any("classifier" in k for k in module.logged) or kind == "classifier"
    assert cb.history[-1][fid.removeprefix("metrics/")] == module.logged[fid]


@pytest.mark.parametrize(
    "features,monitor", [("inception", "metrics/fid"), ("/cache/clf.pt", "metrics/fd_classifier")]
)
def test_the_best_score_checkpoint_monitors_the_logged_name(features, monitor, tmp_path):
    cfg = small_train_cfg(tmp_path, "callbacks=with_metrics", f"callbacks.sample_quality.features={features}")
    assert cfg.callbacks.best_fid.monitor == monitor


# ------------------------------------------------------------------------------------------------ training
def test_training_logs_fd_and_keeps_the_best_fd_checkpoint(classifier28, tmp_path):
    # validation every 2 steps, metrics every 4: computed at the first validation (2), then at 4, not at 6 --
    # and the best-FID ModelCheckpoint never finds its monitor missing
    cfg = small_train_cfg(
        tmp_path / "run",
        "trainer.max_steps=6",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        *metric_overrides(classifier28, tmp_path / "cache", every_n_steps=4),
    )
    result = train(cfg)
    assert result["global_step"] == 6
    # on a classifier's features: the Fréchet distance is FD, logged and monitored as such (never as FID)
    assert cfg.callbacks.best_fid.monitor == "metrics/fd_classifier"
    fids = logged(result["metrics_csv"], "metrics/fd_classifier")
    assert sorted(fids) == [2, 4] and all(v >= 0 for v in fids.values())
    for key in ("metrics/kd_classifier_mean", "metrics/precision", "metrics/classifier_score_mean"):
        assert sorted(logged(result["metrics_csv"], key)) == [2, 4]
    best = tmp_path / "run" / "checkpoints" / "best_fid.ckpt"
    assert best.is_file()
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    (state,) = [v for k, v in ckpt["callbacks"].items() if "metrics/fd_classifier" in k]
    assert float(state["best_model_score"]) == pytest.approx(min(fids.values()), rel=1e-6)
    assert ckpt["global_step"] == min(fids, key=fids.get)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1


@pytest.mark.slow  # a two-process training: ~15 s on 2 cores
def test_ddp_sim_training_logs_the_one_process_fid(classifier28, tmp_path):
    """Two CPU processes (ddp_spawn) share the samples; the FID they log is the one a single process computes
    from the same (EMA) weights, those of the best-FID checkpoint."""
    cfg = small_train_cfg(
        tmp_path / "run",
        "trainer=ddp_sim",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        *metric_overrides(classifier28, tmp_path / "cache", n=10, batch_size=3),
    )
    result = train(cfg)
    assert result["global_step"] == 2
    csv_path = tmp_path / "run" / "csv" / "metrics.csv"
    fids = logged(csv_path, "metrics/fd_classifier")
    assert list(fids) == [2]
    best = tmp_path / "run" / "checkpoints" / "best_fid.ckpt"
    assert best.is_file()

    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule.data_shape, None)
    module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    settings = OmegaConf.to_container(cfg.callbacks.sample_quality, resolve=True)
    settings.pop("_target_")
    cb = SampleQualityCallback(**settings)
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("cpu"), barrier=lambda name=None: None),
        is_global_zero=True,
        datamodule=datamodule,
    )
    cb.setup(trainer, module, "fit")
    scores = cb.score(module)
    assert scores["fid"] == pytest.approx(fids[2], rel=1e-4)
    assert scores["kid_mean"] == pytest.approx(
        logged(csv_path, "metrics/kd_classifier_mean")[2], rel=1e-4, abs=1e-7
    )


def test_ten_thousand_at_batch_512_is_twenty_batches_of_500():
    # 19 x 512 + 272 would make a compiled sampler pad the last batch to 512 and discard 240 images
    assert [b for _, b in rank_batches(10000, 512)] == [500] * 20
    assert largest_batch(10000, 512) == 500 and largest_batch(10001, 500) == 477


def test_the_feature_network_sees_chunks_whatever_the_generation_batch(tmp_path):
    """batch_size=2000 (the fastest generation batch on an H200) must not feed Inception 2000 images at once: real
    and generated images reach the feature network EXTRACT_BATCH_SIZE at a time."""

    from diffusion_lab.metrics import SampleQuality
    from diffusion_lab.metrics.evaluation import QualitySettings, real_features_for
    from diffusion_lab.metrics.quality import EXTRACT_BATCH_SIZE

    seen: list[int] = []

    class Recording:
        feature_id, device, num_features, num_logits = "recording", torch.device("cpu"), 3, 0

        def to(self, device):
            return self

        def features_and_logits(self, x):
            seen.append(len(x))
            return x.flatten(1)[:, :3].float() + torch.randn(len(x), 3), None

    n = 2 * EXTRACT_BATCH_SIZE + 88
    datamodule = SimpleNamespace(
        name="fake", root=None, data_shape=(1, 4, 4), real_images=lambda split, k: torch.zeros(k, 1, 4, 4)
    )
    settings = QualitySettings(features="recording", n_real=n, batch_size=2000, cache_dir=str(tmp_path))
    real = real_features_for(datamodule, Recording(), settings, torch.device("cpu"))
    assert real.shape == (n, 3)
    assert seen == [EXTRACT_BATCH_SIZE, EXTRACT_BATCH_SIZE, 88]
    seen.clear()
    metric = SampleQuality(Recording(), real, kid_subset_size=50, pr_num_samples=None)
    metric.update(torch.zeros(n, 1, 4, 4))
    assert seen == [EXTRACT_BATCH_SIZE, EXTRACT_BATCH_SIZE, 88]
