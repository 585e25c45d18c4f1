"""What the user sees while a command runs: the training bar counts steps to the run's target (also after a
resume), ``features`` shows its classifier's training, and each command's ``--help`` is its own."""

from __future__ import annotations

import subprocess
import sys

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from conftest import cli_env, group_options
from diffusion_lab.callbacks import LossProgressBar
from diffusion_lab.cli import experiment_summaries

pytestmark = pytest.mark.usefixtures("one_thread")


class BarSpy(L.Callback):
    """Records the training bar's (n, total) at the start of each batch and at the end of training."""

    def __init__(self, bar: LossProgressBar):
        self.bar, self.seen = bar, []

    def on_train_batch_start(self, trainer, *args):
        self.seen.append((self.bar.train_progress_bar.n, self.bar.train_progress_bar.total))

    def on_train_end(self, trainer, *args):
        self.seen.append((self.bar.train_progress_bar.n, self.bar.train_progress_bar.total))


def fit(tmp_path, max_steps: int, ckpt_path=None) -> list[tuple[int, int]]:
    bar = LossProgressBar()
    spy = BarSpy(bar)
    trainer = L.Trainer(
        max_steps=max_steps,
        limit_train_batches=3,  # several epochs: the bar must not restart at each one
        limit_val_batches=0,
        callbacks=[bar, spy],
        logger=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(BoringModel(), ckpt_path=ckpt_path)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    return spy.seen


def test_training_bar_counts_steps_to_max_steps(tmp_path):
    seen = fit(tmp_path, max_steps=7)
    assert seen[0] == (0, 7)
    assert [n for n, _ in seen] == list(range(8))  # 0..6 before each step, 7 at the end, across 3 epochs
    assert {total for _, total in seen} == {7}


def test_training_bar_resumes_at_the_checkpoint_step(tmp_path):
    fit(tmp_path, max_steps=4)
    seen = fit(tmp_path, max_steps=10, ckpt_path=tmp_path / "last.ckpt")
    assert seen[0] == (4, 10)
    assert seen[-1] == (10, 10)


def test_features_training_shows_a_counting_bar(capsys):
    from diffusion_lab.metrics.classifier import train_classifier

    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 3, (40,))
    train_classifier(
        x, y, x[:8], y[:8], epochs=2, batch_size=16, num_classes=3, width=4, verbose=True, progress=True
    )
    err = capsys.readouterr().err
    assert "6/6" in err and "3/6" in err  # 2 epochs of 3 batches of at most 16 images, one bar over both


def help_text(command: str, tmp_path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", f"diffusion_lab.{command}", "--help"],
        env=cli_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


# The command's own options, in its --help: (command, options)
OWN_OPTIONS = [
    ("sample", ["ckpt:", "guidance:", "classes:"]),
    ("evaluate", ["ckpt:", "metrics:", "n_real:", "bpd_n:"]),
    ("visualize", ["figure:", "forward", "schedules", "spectrum", "trajectory", "vlb"]),
    ("features", ["epochs:", "width:", "augment:"]),
    ("export", ["ckpt:", "format:", "out:", "overwrite:"]),
    ("import_model", ["src:", "format:", "out:"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("command,options", OWN_OPTIONS)
def test_help_lists_the_commands_own_options(command, options, tmp_path):
    text = help_text(command, tmp_path)
    assert all(o in text for o in options), text
    train_only = ["weighting:", "lr_scheduler", "trainer:", "nonfinite"]
    assert not any(t in text for t in train_only), text


def test_every_experiment_says_what_it_is_for():
    summaries = dict(experiment_summaries())
    assert sorted(summaries) == group_options("experiment")
    assert all(len(what) > 20 for what in summaries.values()), summaries


@pytest.mark.slow
def test_train_help_lists_the_experiments(tmp_path):
    text = help_text("train", tmp_path)
    for name, what in experiment_summaries():
        assert any(line.split() and line.split()[0] == name and what in line for line in text.splitlines()), (
            name
        )
    assert "weighting:" in text


def test_report_help_is_its_own(capsys):
    from diffusion_lab.report import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--out" in text and "sweep" in text and "weighting" not in text
