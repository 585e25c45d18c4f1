"""Step checkpoints and the validation of their step: the checkpoint is written after that validation, so a kill
during it loses nothing (the resume validates that step again), and no validation runs twice."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import EXACT_RESUME, add_trainer_callbacks, cli_env, small_train_cfg
from diffusion_lab.callbacks.step_checkpoint import validation_follows
from diffusion_lab.train import train

N = 4  # batches per epoch: limit_train 64 / batch 16
TESTS = Path(__file__).resolve().parent


class Watch(L.Callback):
    """Records, per step, whether ``validation_follows`` said a validation comes, and which steps validated."""

    def __init__(self):
        self.foretold: set[int] = set()
        self.validated: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if validation_follows(trainer):
            self.foretold.add(trainer.global_step)

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated.append(trainer.global_step)


@pytest.mark.parametrize(
    "validation",
    [
        ["trainer.val_check_interval=null", "trainer.check_val_every_n_epoch=1"],  # every epoch's end
        [
            "trainer.val_check_interval=3",
            "trainer.check_val_every_n_epoch=null",
        ],  # every 3 steps, across epochs
        ["trainer.val_check_interval=2", "trainer.check_val_every_n_epoch=1"],  # every 2 batches of an epoch
    ],
    ids=["epoch", "steps", "batches_of_epoch"],
)
def test_the_foretold_validations_are_the_ones_that_run(tmp_path, monkeypatch, validation):
    watch = Watch()
    add_trainer_callbacks(monkeypatch, watch)
    train(
        small_train_cfg(
            tmp_path, "trainer.max_steps=13", "callbacks.checkpoint.every_n_train_steps=2", *validation
        )
    )
    assert watch.validated and sorted(watch.foretold) == watch.validated
    saved = {int(p.stem.split("_")[1]) for p in (tmp_path / "checkpoints").glob("step_*.ckpt")}
    assert saved == {2, 4, 6, 8, 10, 12}  # deferred or not, every step checkpoint is written
    for step in saved:
        ckpt = torch.load(
            tmp_path / "checkpoints" / f"step_{step:07d}.ckpt", map_location="cpu", weights_only=False
        )
        assert ckpt["global_step"] == step


KILLER = """
import os, sys
sys.path.insert(0, {tests!r})
import lightning as L
import pytest
from conftest import add_trainer_callbacks, small_train_cfg
from diffusion_lab.train import train

class KillInValidation(L.Callback):
    def on_validation_batch_start(self, trainer, *args):
        if trainer.global_step == {step}:
            os._exit(9)  # as a kill -9: nothing of Python's or Lightning's runs after it

add_trainer_callbacks(pytest.MonkeyPatch(), KillInValidation())
train(small_train_cfg(sys.argv[1], *sys.argv[2:]))
"""


def validation_rows(run: Path) -> list[tuple[str, str]]:
    with open(run / "csv" / "metrics.csv") as f:
        return [(r["step"], r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]


def test_a_kill_during_the_validation_of_a_checkpoint_step_is_validated_again(tmp_path):
    """kill -9 during the validation at step 2N, where a step checkpoint also falls due: that checkpoint was
    not written yet, the resume starts from step N and validates step 2N again; the finished run has each
    validation row once, with the numbers of an uninterrupted run."""
    settings = [
        *EXACT_RESUME,
        f"trainer.val_check_interval={N}",
        f"callbacks.checkpoint.every_n_train_steps={N}",
        f"trainer.max_steps={3 * N}",
    ]
    run = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(textwrap.dedent(KILLER.format(tests=str(TESTS), step=2 * N)))
    killer = [sys.executable, str(script), str(run), *settings]
    proc = subprocess.run(killer, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr[-3000:]
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*.ckpt")) == [f"step_{N:07d}.ckpt"]

    train(small_train_cfg(run, *settings, "ckpt_path=last", f"resume_dir={run}"))
    straight = tmp_path / "straight"
    train(small_train_cfg(straight, *settings))
    rows = validation_rows(run)
    assert len(rows) == 3 and len({step for step, _ in rows}) == 3  # steps N, 2N, 3N, once each
    assert rows == validation_rows(straight)
