"""The debug= presets users know from lightning-hydra-template (fdr, limit, overfit, profiler) and tags=[...]."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate

from conftest import compose_train, small_train_cfg
from diffusion_lab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def run(tmp_path: Path, *overrides: str) -> tuple[dict, object]:
    cfg = small_train_cfg(tmp_path / "run", *overrides)
    return train(cfg), cfg


def test_debug_fdr_is_fast_dev_run(tmp_path):
    result, cfg = run(tmp_path, "debug=fdr")
    assert cfg.trainer.fast_dev_run is True
    assert result["global_step"] == 1


def test_debug_limit_runs_few_batches_of_few_epochs(tmp_path):
    result, cfg = run(tmp_path, "debug=limit", "trainer.limit_val_batches=1")
    assert cfg.trainer.limit_train_batches == 3 and cfg.trainer.max_steps == 9
    assert result["global_step"] == 9
    assert Path(result["checkpoint"]).is_file()


def test_debug_overfit_trains_on_one_batch(tmp_path):
    # The preset's own step count is for a real check; a few steps show it composes and runs.
    result, cfg = run(tmp_path, "debug=overfit", "trainer.max_steps=3")
    assert cfg.trainer.overfit_batches == 1
    assert compose_train(["debug=overfit"]).trainer.max_steps >= 100
    assert result["global_step"] == 3


def test_debug_profiler_writes_the_simple_profile(tmp_path):
    result, _ = run(tmp_path, "debug=profiler", "trainer.max_steps=2")
    assert result["global_step"] == 2
    report = Path(result["output_dir"], "fit-profiler.txt")
    assert report.is_file() and "run_training_epoch" in report.read_text()


def test_tags_reach_the_logged_config(tmp_path):
    result, _ = run(tmp_path, "debug=limit", "trainer.max_steps=1", "logger=csv", "tags=[baseline,cosine]")
    [hparams] = Path(result["output_dir"]).rglob("hparams.yaml")
    assert yaml.safe_load(hparams.read_text())["tags"] == ["baseline", "cosine"]


def test_tags_are_wandb_run_tags(tmp_path, wandb_offline):
    cfg = compose_train(["logger=wandb", "tags=[baseline,cosine]"], tmp_path)
    logger = instantiate(cfg.logger.wandb)
    assert logger._wandb_init["tags"] == ["baseline", "cosine"]


def test_tags_default(tmp_path):
    assert list(compose_train([], tmp_path).tags) == ["dev"]
