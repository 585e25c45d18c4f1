"""A run rejected at start-up: Hydra's composition errors as one line (in-process, fast), and the run folder
removed only when it holds nothing of value and this run created it."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from diffusion_lab import errors
from diffusion_lab.cli import CONFIG_DIR, composition_error_message
from diffusion_lab.sample import fixed_by_checkpoint


def composition_error(config_name: str, *overrides: str) -> Exception:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"), pytest.raises(Exception) as info:
        compose(config_name, overrides=list(overrides))
    GlobalHydra.instance().clear()
    return info.value


@pytest.mark.parametrize(
    "config_name,override,expected",
    [
        (
            "train",
            "model=unet_tiy",
            "model=unet_tiy is not an option of model; choose one of: dit_b, dit_s, mlp",
        ),
        (
            "train",
            "optimizer.lrr=1",
            "optimizer.lrr is not a key of the train config; did you mean optimizer.lr?",
        ),
        ("train", "seed=[1,", "cannot parse the override 'seed=[1,'"),
        (
            "sample",
            "prediction=v",
            "prediction is fixed by the checkpoint and cannot be overridden when sampling",
        ),
    ],
)
def test_composition_errors_are_one_line(config_name, override, expected):
    message = composition_error_message(
        composition_error(config_name, override), config_name, fixed_by_checkpoint
    )
    assert message is not None and expected in message and "\n" not in message


def test_a_key_an_option_drops_is_not_taken_for_a_misspelling():
    """``process=edm`` drops the schedule group: its keys are no misspelling of themselves."""
    err = composition_error("train", "process=edm", "schedule.num_timesteps=50")
    assert composition_error_message(err, "train") == (
        "schedule.num_timesteps is not a key of the train config with the options chosen (only of its defaults): "
        "an option chosen drops or replaces schedule; drop the schedule.num_timesteps= override"
    )


def test_other_errors_are_not_taken_for_composition_errors():
    assert composition_error_message(ValueError("x"), "train") is None


def rejected(monkeypatch, folder, created: bool) -> None:
    monkeypatch.setattr(errors, "_created_run_dir", str(folder) if created else None)
    errors.discard_rejected_run()


def hydra_files(folder):
    (folder / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (folder / ".hydra" / name).write_text(OmegaConf.to_yaml({"seed": 1}))
    (folder / "train.log").write_text("")
    (folder / "csv").mkdir()
    (folder / "csv" / "hparams.yaml").write_text("seed: 1\n")
    return folder


def test_a_rejected_runs_folder_is_removed(tmp_path, monkeypatch):
    run = hydra_files(tmp_path / "run")
    rejected(monkeypatch, run, created=True)
    assert not run.exists()


@pytest.mark.parametrize("kept", ["checkpoints/last.ckpt", "csv/metrics.csv", "samples/final.png"])
def test_a_folder_holding_more_is_kept(tmp_path, monkeypatch, kept):
    run = hydra_files(tmp_path / "run")
    (run / kept).parent.mkdir(exist_ok=True)
    (run / kept).write_bytes(b"x")
    rejected(monkeypatch, run, created=True)
    assert (run / kept).exists() and (run / ".hydra" / "config.yaml").exists()


def test_a_folder_that_existed_before_the_run_is_kept(tmp_path, monkeypatch):
    run = hydra_files(tmp_path / "run")
    rejected(monkeypatch, run, created=False)
    assert (run / ".hydra").exists()
