"""Shared test helpers."""

from __future__ import annotations

# =========================================================================================================
# Composing and shrinking the training config (used by test_configs.py, test_train.py, test_sample_cli.py)
# =========================================================================================================
import os
import pickle
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from diffusion_lab.train import CONFIG_DIR

REPO_ROOT = Path(CONFIG_DIR).parent


def group_options(group: str) -> list[str]:
    """The option names of a config group (conf/<group>/*.yaml), so new options are covered automatically."""
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


# A UNet small enough to train a few steps in well under a second on a CPU (~40 K parameters at 28x28).
TINY_UNET = [
    "model.base_channels=8",
    "model.channel_mult=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[]",
    "model.groups=4",
    "model.dropout=0.0",
    "model.num_heads=1",
]
TINY_MLP = ["model.hidden=16", "model.num_layers=1", "model.time_embed_dim=16"]
TINY_DIT = ["model.hidden_size=32", "model.depth=1", "model.num_heads=2", "model.patch_size=4"]

# Whatever an experiment asks for, run on this CPU: no GPU, no compile, no mixed precision, no time guard,
# no progress bars / model summaries cluttering the test log.
CPU_ONLY = [
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
    "schedule.num_timesteps=50",
    "sampler.steps=3",
    "final_samples=4",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "++data.limit_train=64",
    "++data.val_size=16",
    "trainer.limit_val_batches=1",
]


def tiny_model_overrides(model: str) -> list[str]:
    """Overrides that shrink the network of config option ``model`` (a conf/model/*.yaml name)."""
    if model.startswith("unet"):
        return list(TINY_UNET)
    if model.startswith("dit"):
        return list(TINY_DIT)
    if model == "mlp":
        return list(TINY_MLP)
    raise AssertionError(f"no tiny overrides for model={model}; add them to tests/conftest.py")


def compose_train(
    overrides: Iterable[str] = (), output_dir: str | Path | None = None, config_name: str = "train"
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as ``@hydra.main`` would, with ``paths.output_dir`` set.

    The hydra node is registered with ``HydraConfig`` (so ``${hydra:...}`` interpolations resolve) and then
    removed from the returned config, as in a real run.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        if output_dir is not None and "paths" in cfg:
            cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


def dedupe_overrides(overrides: Iterable[str]) -> list[str]:
    """Keep the last override of each key (Hydra refuses a key given twice; '+key' and 'key' are one key)."""
    last: dict[str, str] = {}
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        last.pop(key, None)
        last[key] = o
    return list(last.values())


def small_train_cfg(
    output_dir: str | Path, *overrides: str, model: str = "unet_tiny", fast_dev_run: bool = False
) -> DictConfig:
    """The training config shrunk for a CPU test: tiny ``model`` (give the option name when overriding the
    model group), few steps and timesteps, CPU only. ``overrides`` come last and win."""
    base = [*CPU_ONLY, *SMALL_RUN, *tiny_model_overrides(model)]
    if fast_dev_run:
        base.append("debug=fast_dev_run")
    return compose_train(dedupe_overrides([*base, *overrides]), output_dir)


def write_fake_cifar(root: Path, per_batch: int = 8, test_size: int = 8) -> Path:
    """A CIFAR-10 python folder under ``root`` (5 train batches of ``per_batch`` random images and a test
    batch); returns ``root`` (what ``data.root`` takes)."""
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


def write_image_folder(root: Path, n: int = 6, size: int = 20) -> Path:
    """A folder of ``n`` small RGB PNGs in two class sub-folders."""
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


@pytest.fixture(autouse=False)
def wandb_offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def clean_hydra():
    """Leave no global Hydra state behind (other tests compose their own configs)."""
    yield
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None  # type: ignore[assignment]


def cpu_env() -> dict[str, str]:
    """Environment for a CLI subprocess: no GPU, W&B offline, quiet."""
    env = dict(os.environ)
    env.update(CUDA_VISIBLE_DEVICES="", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks on a shared 2-core CPU: intra-op threads only add synchronisation (a 3x3 conv on a tiny
    batch is ~100x slower with 2 threads when the other core is busy), so these tests run single-threaded."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
