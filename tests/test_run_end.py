"""However a fit ends (max_steps, max_time, a preemption signal, Ctrl-C, an error in a callback), last.ckpt holds
its final step: the step the summary reports and the final samples come from; and the run's own record
(run_status.json) says how it ended."""

from __future__ import annotations

import csv
import os
import signal

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.trainer.states import RunningStage

from conftest import add_trainer_callbacks, small_train_cfg
from diffusion_lab import training as train_module
from diffusion_lab.checkpointing import verify_checkpoint
from diffusion_lab.run_status import read_run_status
from diffusion_lab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

STOP = 5  # the step each run ends at; step checkpoints every 3 steps, so last.ckpt of step 3 is the stale one
RESUME = "ckpt_path=last resume_dir="
# How each ending is recorded: (status, the record's other fields that say why).
RECORDED = {
    "max_steps": ("COMPLETED", {"global_step": STOP}),
    "max_time": (
        "INCOMPLETE",
        {"global_step": STOP, "reason": f"stopped at step {STOP} of trainer.max_steps=1000"},
    ),
    "sigusr1": ("INTERRUPTED", {"global_step": STOP, "stopped_by": "SIGUSR1"}),
    "keyboard_interrupt": ("INTERRUPTED", {"stopped_by": "Ctrl-C"}),
    "exception": ("FAILED", {"error": "RuntimeError: a callback failed"}),
}


class EndAt(L.Callback):
    """Ends the fit after step ``STOP`` in the way named: the time guard runs out, a SIGUSR1 arrives, Ctrl-C,
    or an error."""

    def __init__(self, how: str):
        self.how = how

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.how == "sigusr1" and trainer.global_step == STOP - 1:
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != STOP:
            return
        if self.how == "max_time":  # Lightning's Timer (after this callback) finds the time spent
            timer = next(c for c in trainer.callbacks if isinstance(c, Timer))
            timer._start_time[RunningStage.TRAINING] -= 10**6
        elif self.how == "keyboard_interrupt":
            raise KeyboardInterrupt
        elif self.how == "exception":
            raise RuntimeError("a callback failed")


@pytest.mark.parametrize("how", ["max_steps", "max_time", "sigusr1", "keyboard_interrupt", "exception"])
def test_last_ckpt_holds_the_final_step(how, tmp_path, monkeypatch, capsys):
    built = {}
    build_module = train_module.build_module

    def capture(*args, **kwargs):
        built["module"] = build_module(*args, **kwargs)
        return built["module"]

    monkeypatch.setattr(train_module, "build_module", capture)
    add_trainer_callbacks(monkeypatch, EndAt(how))  # the Trainer gets the callback that ends the fit
    cfg = small_train_cfg(
        tmp_path,
        f"trainer.max_steps={STOP if how == 'max_steps' else 1000}",
        "trainer.max_time=01:00:00:00",
        "callbacks.checkpoint.every_n_train_steps=3",
        "trainer.val_check_interval=100",
    )
    last = tmp_path / "checkpoints" / "last.ckpt"
    if how in ("keyboard_interrupt", "exception"):
        # the run did not finish: it still fails (Ctrl-C exits 1), after saying where its last step is
        with pytest.raises(SystemExit if how == "keyboard_interrupt" else RuntimeError) as err:
            train(cfg)
        if how == "keyboard_interrupt":
            assert err.value.code == 1
        assert f"at step {STOP}: {last} holds that step" in capsys.readouterr().err
        result = None
    else:
        result = train(cfg)
        assert result["global_step"] == STOP and result["checkpoint"] == str(last)
        assert f"steps trained : {STOP}\n" in capsys.readouterr().out
    assert verify_checkpoint(last) is None
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STOP
    # the EMA in state_dict and the live weights in current_model_state, as in every checkpoint
    ema, live = ckpt["state_dict"], ckpt["current_model_state"]
    assert ema.keys() == live.keys() and any(not torch.equal(ema[k], v) for k, v in live.items())
    if result is not None and how != "sigusr1":  # the final samples come from the checkpoint's EMA weights
        assert (tmp_path / "samples" / "final.png").is_file()
        module_state = built["module"].state_dict()
        assert [k for k in ema if not torch.equal(ema[k], module_state[k])] == []
    record = read_run_status(tmp_path)
    status, fields = RECORDED[how]
    assert (
        record["status"] == status
        and record["pid"] == os.getpid()
        and record["max_steps"] == (STOP if how == "max_steps" else 1000)
    )
    assert {k: record.get(k) for k in fields} == fields
    assert (RESUME + str(tmp_path) in record.get("resume", "")) == (status == "INTERRUPTED")


def test_a_signal_during_the_final_samples_stops_the_run_as_interrupted(tmp_path, monkeypatch, capsys):
    """SIGUSR1 (a scheduler's notice) while the final samples are drawn, after the fit put the default handlers
    back: the samples stop at once, the run is recorded as stopped by the signal with its resume command (not
    left RUNNING by a killed process), and the resume writes the samples."""
    write_final_samples = train_module.write_final_samples

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)
        return write_final_samples(*args, **kwargs)

    monkeypatch.setattr(train_module, "write_final_samples", signalled)
    # the process's own handler (a test must not die by the default action): kept in place without the fix
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        result = train(small_train_cfg(tmp_path, "trainer.max_steps=2", "trainer.val_check_interval=2"))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert result["preempted"]["signal"] == "SIGUSR1" and result["preempted"]["step"] == 2
    assert not (tmp_path / "samples" / "final.png").exists()
    assert "stopped by    : SIGUSR1 at step 2" in capsys.readouterr().out
    record = read_run_status(tmp_path)
    assert record["status"] == "INTERRUPTED" and record["stopped_by"] == "SIGUSR1"
    assert record["global_step"] == 2 and RESUME + str(tmp_path) in record["resume"]
    assert verify_checkpoint(last) is None

    monkeypatch.setattr(train_module, "write_final_samples", write_final_samples)
    resumed = train(small_train_cfg(tmp_path / "x", "ckpt_path=last", f"resume_dir={tmp_path}"))
    assert resumed["global_step"] == 2 and (tmp_path / "samples" / "final.png").is_file()
    assert read_run_status(tmp_path)["status"] == "COMPLETED"


class InterruptBefore(L.Callback):
    """Ctrl-C as the batch after step ``STOP`` starts (in its hooks, after the loop counted step ``STOP``)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == STOP:
            raise KeyboardInterrupt


def test_a_run_resumed_after_ctrl_c_logs_each_step_once(tmp_path, monkeypatch):
    """The checkpoint FinalCheckpoint writes on Ctrl-C holds step ``STOP``; its resume logs the next steps at
    ``STOP``, ``STOP + 1``: metrics.csv has every step once, none skipped and none past ``trainer.max_steps``."""
    common = ["trainer.log_every_n_steps=1", "trainer.val_check_interval=100", "final_samples=0"]
    with monkeypatch.context() as m:
        add_trainer_callbacks(m, InterruptBefore())
        with pytest.raises(SystemExit):
            train(small_train_cfg(tmp_path, *common, "trainer.max_steps=1000"))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == STOP
    resume = ["ckpt_path=last", f"resume_dir={tmp_path}", f"trainer.max_steps={STOP + 2}"]
    result = train(small_train_cfg(tmp_path / "x", *common, *resume))
    assert result["global_step"] == STOP + 2
    with open(result["metrics_csv"]) as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == list(range(STOP + 2))
