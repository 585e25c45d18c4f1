"""Shared test helpers."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from diffusion_lab import training as train_module
from diffusion_lab.overrides import override_key
from diffusion_lab.train import CONFIG_DIR, compose_config

# =========================================================================================================
# Training configs for tests: compose conf/ as `@hydra.main` would, shrink to a few CPU seconds, fake data.
# (Used by test_configs.py, test_train.py and test_sample_cli.py.)
# =========================================================================================================


def group_options(group: str) -> list[str]:
    """The option names of a config group (conf/<group>/*.yaml): new options are covered automatically."""
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def option_processes(group: str, option: str) -> tuple[str, ...] | None:
    """The processes the part of conf/<group>/<option>.yaml applies to (its class's ``processes``; None: any)."""
    import yaml
    from hydra.utils import get_class

    target = yaml.safe_load((Path(CONFIG_DIR) / group / f"{option}.yaml").read_text())["_target_"]
    return getattr(get_class(target), "processes", None)


def process_options(group: str, process: str) -> list[str]:
    """The options of a group that apply to ``process`` (ddpm, edm, flow)."""
    return [o for o in group_options(group) if (p := option_processes(group, o)) is None or process in p]


def config_groups() -> list[str]:
    """Every config group (sub-folder of conf/)."""
    return sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and any(p.glob("*.yaml")))


# Tiny networks, by the class the model config targets: a few seconds of CPU for a whole test run.
TINY_MODEL = {
    "UNet": [  # ~40 K parameters at 28x28
        "model.base_channels=8",
        "model.channel_mult=[1,2]",
        "model.num_res_blocks=1",
        "model.attention_resolutions=[]",
        "model.groups=4",
        "model.dropout=0.0",
        "model.num_heads=1",
    ],
    "DiT": ["model.hidden_size=32", "model.depth=1", "model.num_heads=2", "model.patch_size=4"],
    "MLPDenoiser": ["model.hidden=16", "model.num_layers=1", "model.time_embed_dim=16"],
}

# Whatever an experiment asks for, run on this CPU: no GPU, no compile, no mixed precision, no time guard,
# no progress bars or model summaries in the test log.
CPU_ONLY = [
    "experiment=fmnist_cpu",  # the CPU-sized preset (`make train`); tests may choose another after it
    "trainer=cpu",
    "trainer.precision=32-true",
    "trainer.max_time=null",
    "trainer.benchmark=false",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "++data.on_gpu=false",
    "compile=false",
]
# A few cheap steps: tiny data, few timesteps, few sampling steps, few samples.
SMALL_RUN = [
    "++schedule.num_timesteps=50",  # ++: leftover settings (ignored) where the process takes no schedule
    "sampler.steps=3",
    "final_samples=4",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "++data.limit_train=64",
    "++data.val_size=16",
    "++data.num_workers=0",
    "trainer.limit_val_batches=1",
    "++callbacks.sample_grid.n=4",
]


# ``conf/<config_name>.yaml`` with overrides, as ``@hydra.main`` would compose it (the tests' name for it).
compose_train = compose_config


def dedupe_overrides(overrides: Iterable[str]) -> list[str]:
    """Keep the last override of each key ('+key', '++key' and 'key' are one key), in their order."""
    last: dict[str, str] = {}
    for o in overrides:
        key = override_key(o)
        last.pop(key, None)
        last[key] = o
    return list(last.values())


def tiny_model_overrides(cfg: DictConfig) -> list[str]:
    """Overrides that shrink the network of a composed config (whatever model option it uses)."""
    target = str(cfg.model._target_).rsplit(".", 1)[-1]
    assert target in TINY_MODEL, f"no tiny overrides for model target {target}; add them to tests/conftest.py"
    return list(TINY_MODEL[target])


def small_train_cfg(output_dir: str | Path, *overrides: str, fast_dev_run: bool = False) -> DictConfig:
    """The training config (with ``overrides``) shrunk for a CPU test: tiny network of the chosen model, few
    steps, 50 timesteps, CPU only, progress bars off. ``overrides`` come last and win."""
    base = [*CPU_ONLY, *SMALL_RUN, *(["debug=fast_dev_run"] if fast_dev_run else [])]
    probe = compose_train(dedupe_overrides([*base, *overrides]))
    return compose_train(dedupe_overrides([*base, *tiny_model_overrides(probe), *overrides]), output_dir)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Minimal IDX (MNIST format) writer, uint8 only; gzip when the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_fake_idx_root(root: Path, n_train: int = 40, n_test: int = 8) -> Path:
    """An MNIST / Fashion-MNIST folder of random 28x28 digits (what ``data.root`` takes)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return root


def write_fake_cifar(root: Path, per_batch: int = 16, test_size: int = 8) -> Path:
    """A CIFAR-10 python folder under ``root``: 5 train batches of ``per_batch`` random 32x32 images and a test
    batch; returns ``root`` (what ``data.root`` takes)."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        n = test_size if name == "test_batch" else per_batch
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    return Path(root)


def write_image_folder(root: Path, n: int = 24, size: int = 20) -> Path:
    """A folder of ``n`` small random RGB PNGs in two class sub-folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        sub = Path(root) / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(sub / f"{i}.png")
    return Path(root)


@pytest.fixture(scope="session")
def fake_cifar_root(tmp_path_factory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks on a shared 2-core CPU: intra-op threads only add synchronisation (a 3x3 conv on a tiny
    batch measured ~100x slower with 2 threads while the other core is busy), so run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Set in the test process by the compile policy (compile_cache= and Triton's cache beside it, Triton's ptxas) when
# a test trains or evaluates with compile on: left behind, they would reach every later test's subprocesses
# (cli_env copies os.environ), where a user's own TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR are honoured.
COMPILE_ENV = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TRITON_PTXAS_PATH")


@pytest.fixture(autouse=True)
def restore_compile_env():
    before = {key: os.environ.get(key) for key in COMPILE_ENV}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def wandb_offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def cli_env(root: Path) -> dict[str, str]:
    """Environment for a CLI subprocess: run directories under ``root``, no GPU, one thread, W&B offline."""
    env = dict(os.environ)
    env.update(
        DIFFUSION_LAB_ROOT=str(root),
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        WANDB_MODE="offline",
        PYTHONUNBUFFERED="1",
    )
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def add_trainer_callbacks(monkeypatch, *callbacks) -> None:
    """``train()``'s Trainer gets ``callbacks`` after its own (it is built by ``instantiate`` from the config
    holding ``max_steps``; every other object ``train()`` instantiates is left alone)."""
    real = train_module.instantiate

    def instantiate(config, *args, **kwargs):
        if "callbacks" in kwargs and "max_steps" in config:
            kwargs["callbacks"] = [*kwargs["callbacks"], *callbacks]
        return real(config, *args, **kwargs)

    monkeypatch.setattr(train_module, "instantiate", instantiate)


# The settings under which a resumed run equals an uninterrupted one bit for bit (with a checkpoint to resume).
EXACT_RESUME = ["trainer.deterministic=true", "seed=7", "trainer.log_every_n_steps=1", "final_samples=0"]


def signal_training(root: Path, overrides: list[str], ready: Path, signum: int) -> tuple[int, str, str]:
    """``python -m diffusion_lab.train *overrides`` in a child process (``cli_env(root)``), sent ``signum`` as
    soon as ``ready`` exists (a step checkpoint: it trained that far); its exit status, stdout and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffusion_lab.train", *overrides],
        cwd=root,
        env=cli_env(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while not ready.exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


# A tiny autoencoder (task=autoencoder) on the offline digits, f = 2 (16x16 -> 8x8x2): a few CPU seconds. It is
# fully convolutional, so it also encodes any 1-channel data of even size (28x28 Fashion-MNIST -> 14x14x2).
TINY_AUTOENCODER = [
    "task=autoencoder",
    "data=digits",
    "task.net.base_channels=8",
    "task.net.groups=4",
    "task.net.channel_mult=[1,2]",
    "task.net.latent_channels=2",
    "optimizer.lr=3e-3",
    "lr_scheduler.warmup_steps=5",
    "callbacks.ema.decay=0.9",
]
TINY_AUTOENCODER_STEPS = 60


def train_tiny_autoencoder(output_dir: str | Path, *overrides: str) -> Path:
    """Train the tiny autoencoder into ``output_dir``; returns its checkpoint."""
    from diffusion_lab.train import train

    steps = f"trainer.max_steps={TINY_AUTOENCODER_STEPS}"
    every = f"trainer.val_check_interval={TINY_AUTOENCODER_STEPS}"
    cfg = small_train_cfg(output_dir, *TINY_AUTOENCODER, steps, every, *overrides)
    return Path(train(cfg)["checkpoint"])


@pytest.fixture(scope="session")
def tiny_autoencoder(tmp_path_factory) -> Path:
    """The checkpoint of the tiny autoencoder (for ``autoencoder=PATH``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_tiny_autoencoder(tmp_path_factory.mktemp("autoencoder"))
    finally:
        torch.set_num_threads(before)


# ======================================================================================= end of training configs


# --------------------------------------------------------------------- Inception without a download
@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """A random-init torch-fidelity FeatureExtractorInceptionV3 state dict saved to a temp file."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    mpatch = pytest.MonkeyPatch()
    mpatch.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: None)
    mpatch.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
    try:
        torch.manual_seed(0)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        mpatch.undo()
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def no_download(monkeypatch, tmp_path) -> Path:
    """An empty torch hub dir and a tripwire on torch-fidelity's downloader."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def fail(*a, **k):
        raise AssertionError("attempted a download")

    monkeypatch.setattr(tfi, "load_state_dict_from_url", fail)
    return tmp_path / "torch_home"


# =========================================================================================================
# CI: no silent skips, reproducible property tests.
# =========================================================================================================
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Hypothesis draws the same examples in every CI run, so the counts the docs quote are reproducible.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if IN_CI:
    _hypothesis_settings.load_profile("ci")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skipped test fails, unless it is marked ``gpu`` (CI has no GPU): a missing package or data set
    must not turn a check into a silent pass."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail") and not item.get_closest_marker("gpu"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every non-GPU test must run: {reason}"


def documented_count(pattern: str, doc: str = "RELIABILITY.md") -> int:
    """The number a doc quotes, found by ``pattern`` (a regex with one group of digits): tests that produce a
    count assert it equals the quoted one, so the doc cannot drift from what runs."""
    import re

    text = (Path(__file__).resolve().parents[1] / doc).read_text()
    found = re.search(pattern, text)
    assert found, f"{doc} no longer says {pattern!r}"
    return int(found.group(1))
