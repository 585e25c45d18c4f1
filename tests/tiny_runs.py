"""Tiny training runs of the processes that take no schedule (process=edm, flow) and the checks they share: each
option trains one step, and a class-conditional checkpoint samples one image per class with guidance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from conftest import compose_train, small_train_cfg
from diffusion_lab.sample import sample
from diffusion_lab.train import train


def process_run(process: str) -> list[str]:
    """The overrides that pick ``process``. The CPU preset names a schedule, which the process does not take:
    ~schedule drops it (its leftover num_timesteps from the tests' small-run settings is ignored, having no
    _target_)."""
    return [f"process={process}", "~schedule"]


def train_conditional(output_dir: Path, process: str, *overrides: str) -> dict:
    """A tiny class-conditional Fashion-MNIST UNet trained two steps with ``process`` (label dropout 0.2): the
    result of ``train``, checked to have run both steps with a finite val/loss and no likelihood bound."""
    cfg = small_train_cfg(
        output_dir,
        *process_run(process),
        "conditional=true",
        "p_uncond=0.2",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        *overrides,
    )
    result = train(cfg)
    assert result["global_step"] == 2 and math.isfinite(result["metrics"]["val/loss"])
    assert "val/bpd_one_t_mc" not in result["metrics"]  # no likelihood bound outside the Gaussian process
    return result


def fast_dev_run(output_dir: Path, process: str, *overrides: str) -> None:
    """One training step of ``process`` with ``overrides``: a finite loss, and the final samples written."""
    result = train(small_train_cfg(output_dir, *process_run(process), *overrides, fast_dev_run=True))
    assert result["global_step"] == 1 and math.isfinite(result["metrics"]["train/loss"])
    assert Path(result["samples_npz"]).is_file()


def sample_checkpoint(checkpoint: Path, out_dir: Path, *overrides: str) -> dict:
    """The sample command on ``checkpoint``: ten samples on the CPU into ``out_dir``, with ``overrides``."""
    fixed = [f"ckpt={checkpoint}", f"out_dir={out_dir}", "device=cpu", "progress=false", "n=10"]
    return sample(compose_train([*fixed, *overrides], config_name="sample"))


def guided_samples(checkpoint: Path, out_dir: Path, sampler: str) -> str:
    """Ten samples of a class-conditional checkpoint with ``sampler`` at 3 steps and guidance 2, checked to be
    one image per class; returns the sampler the command used (its repr)."""
    result = sample_checkpoint(checkpoint, out_dir, f"sampler={sampler}", "steps=3", "guidance=2.0")
    saved = np.load(result["samples_npz"])
    assert saved["images"].shape == (10, 28, 28, 1) and saved["labels"].tolist() == list(range(10))
    return result["sampler"]
