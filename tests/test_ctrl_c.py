"""Ctrl-C during training: the first finishes the step, saves last.ckpt and stops (a resume continues exactly);
a second stops at once; the command exits 1 with the run recorded as interrupted."""

from __future__ import annotations

import csv
import json
import os
import signal

import lightning as L
import pytest
import torch

from conftest import (
    CPU_ONLY,
    EXACT_RESUME,
    SMALL_RUN,
    TINY_MODEL,
    add_trainer_callbacks,
    dedupe_overrides,
    signal_training,
    small_train_cfg,
)
from diffusion_lab.train import train

STOP = 5  # Ctrl-C as the batch after this step starts: mid-epoch (4 batches per epoch)


class CtrlC(L.Callback):
    """Sends SIGINT ``times`` times as the batch after step ``STOP`` starts (the next batch is fetched then)."""

    def __init__(self, times: int):
        self.times = times

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == STOP:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


def losses(metrics_csv) -> dict[int, str]:
    with open(metrics_csv) as f:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(f) if r.get("train/loss")}


def test_ctrl_c_finishes_the_step_and_the_resume_is_exact(tmp_path, monkeypatch, capsys):
    before = signal.getsignal(signal.SIGINT)
    straight = train(small_train_cfg(tmp_path / "straight", *EXACT_RESUME, "trainer.max_steps=10"))
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        add_trainer_callbacks(m, CtrlC(times=1))
        stopped = train(small_train_cfg(run, *EXACT_RESUME, "trainer.max_steps=1000"))
    assert stopped["preempted"]["signal"] == "SIGINT" and stopped["preempted"]["step"] == STOP + 1
    assert "Ctrl-C: finishing this step, saving a checkpoint and stopping" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) == before
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STOP + 1
    resumed = train(
        small_train_cfg(run, *EXACT_RESUME, "ckpt_path=last", f"resume_dir={run}", "trainer.max_steps=10")
    )
    assert losses(resumed["metrics_csv"]) == losses(straight["metrics_csv"])  # every step, the same losses


def test_a_second_ctrl_c_stops_at_once(tmp_path, monkeypatch):
    add_trainer_callbacks(monkeypatch, CtrlC(times=2))
    with pytest.raises(SystemExit):  # Lightning's answer to KeyboardInterrupt
        train(small_train_cfg(tmp_path, *EXACT_RESUME, "trainer.max_steps=1000"))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STOP  # saved where it stopped (FinalCheckpoint), the next step not trained


def test_ctrl_c_ends_the_command_with_exit_1_and_an_interrupted_record(tmp_path):
    run = tmp_path / "run"
    overrides = dedupe_overrides(
        [
            *CPU_ONLY,
            *SMALL_RUN,
            *TINY_MODEL["UNet"],
            "trainer.max_steps=100000",
            "callbacks.checkpoint.every_n_train_steps=4",
            "final_samples=0",
            f"hydra.run.dir={run}",
        ]
    )
    code, out, err = signal_training(
        tmp_path, overrides, run / "checkpoints" / "step_0000004.ckpt", signal.SIGINT
    )
    assert code == 1, err[-3000:]
    assert "Traceback" not in err
    record = json.loads((run / "run_status.json").read_text())
    step = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "global_step"
    ]
    assert record["status"] == "INTERRUPTED" and record["global_step"] == step >= 4
    assert f"stopped by    : SIGINT at step {step}" in out
    assert f"ckpt_path=last resume_dir={run}" in out
