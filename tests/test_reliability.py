"""Nothing lost on a kill, a preemption, a NaN or bad input (RELIABILITY.md lists the guarantees).

* atomic checkpoints with a sha256 sidecar; ``ckpt_path=last`` falls back past a corrupt ``last.ckpt``;
* SIGTERM / SIGUSR1: checkpoint, stop, exit 0, resume from that step;
* kill -9 at random points, restarted each time: the final weights equal an uninterrupted run's, bit for bit;
* a non-finite loss or gradient: the step is skipped (and counted) or training stops with one line;
* an unwritable output directory, wrong value types: one line at start-up.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from conftest import (
    CPU_ONLY,
    EXACT_RESUME,
    SMALL_RUN,
    TINY_MODEL,
    add_trainer_callbacks,
    cli_env,
    dedupe_overrides,
    documented_count,
    signal_training,
    small_train_cfg,
)
from diffusion_lab import checkpointing
from diffusion_lab import training as train_module
from diffusion_lab.build import CheckpointError, build_module, load_checkpoint
from diffusion_lab.callbacks import EMA
from diffusion_lab.checkpointing import (
    AtomicCheckpointIO,
    BackgroundCheckpointIO,
    atomic_torch_save,
    file_sha256,
    newest_good_checkpoint,
    sidecar_path,
    verify_checkpoint,
)
from diffusion_lab.errors import NonFiniteError, UserError
from diffusion_lab.module import CHECKPOINT_KEY
from diffusion_lab.train import train
from diffusion_lab.training import check_output_dir, resolve_ckpt_path, trainer_plugins

pytestmark = pytest.mark.usefixtures("one_thread")

N = 4  # batches per epoch: limit_train 64 / batch 16


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ------------------------------------------------------------------------------------ atomic checkpoints
def test_atomic_save_writes_sidecar_and_survives_a_failed_write(tmp_path, monkeypatch):
    path = tmp_path / "ckpts" / "last.ckpt"
    digest = atomic_torch_save({"state_dict": {"w": torch.arange(4.0)}}, path)
    assert sidecar_path(path).read_text() == f"{digest}  last.ckpt\n" and file_sha256(path) == digest
    assert verify_checkpoint(path) is None
    before = path.read_bytes()

    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):  # the process dies while the bytes go out
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"state_dict": {"w": torch.zeros(4)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before and verify_checkpoint(path) is None  # the previous one, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]  # no temp left


def test_checkpoint_io_is_the_trainers_and_removes_sidecars(tmp_path):
    cfg = small_train_cfg(tmp_path, "trainer.max_steps=4", "callbacks.checkpoint.every_n_train_steps=2")
    plugins = trainer_plugins(cfg)
    assert [type(p) for p in plugins] == [BackgroundCheckpointIO]  # the default: checkpoint_writes=background
    result = train(cfg)
    folder = tmp_path / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "last.ckpt",
        "last.ckpt.sha256",
        "step_0000002.ckpt",
        "step_0000002.ckpt.sha256",
        "step_0000004.ckpt",
        "step_0000004.ckpt.sha256",
    ]
    assert all(verify_checkpoint(folder / n) is None for n in names if n.endswith(".ckpt"))
    assert load(result["checkpoint"])["global_step"] == 4
    AtomicCheckpointIO().remove_checkpoint(folder / "step_0000002.ckpt")
    assert not (folder / "step_0000002.ckpt").exists() and not (folder / "step_0000002.ckpt.sha256").exists()


def test_configured_checkpoint_plugin_is_kept(tmp_path):
    cfg = small_train_cfg(
        tmp_path, "+trainer.plugins=[{_target_: lightning.pytorch.plugins.io.TorchCheckpointIO}]"
    )
    plugins = trainer_plugins(cfg)
    assert len(plugins) == 1 and type(plugins[0]).__name__ == "TorchCheckpointIO"


def test_foreground_writes_and_checkpoint_uploading_loggers_get_the_synchronous_writer(tmp_path):
    assert [type(p) for p in trainer_plugins(small_train_cfg(tmp_path, "checkpoint_writes=foreground"))] == [
        AtomicCheckpointIO
    ]
    # W&B's log_model reads each checkpoint file as soon as it is saved: it must already be there
    cfg = small_train_cfg(tmp_path)
    cfg.logger = OmegaConf.create({"wandb": {"_target_": "x", "log_model": "all"}})
    assert [type(p) for p in trainer_plugins(cfg)] == [AtomicCheckpointIO]


class _HeldWriter:
    """Replaces AtomicCheckpointIO.save_checkpoint: each write waits until ``release`` is set (or fails)."""

    def __init__(self, io: BackgroundCheckpointIO, fail: bool = False):
        import threading

        self.release, self.fail, self.real = threading.Event(), fail, io.checkpoint_io.save_checkpoint
        io.checkpoint_io.save_checkpoint = self

    def __call__(self, checkpoint, path, storage_options=None):
        assert self.release.wait(10)
        if self.fail:
            raise OSError(28, "No space left on device")
        self.real(checkpoint, path, storage_options)


def test_background_writes_save_the_tensors_as_they_were_when_saved(tmp_path):
    io = BackgroundCheckpointIO()
    held = _HeldWriter(io)
    weights = torch.arange(4.0)
    path = tmp_path / "step_0000001.ckpt"
    io.save_checkpoint({"state_dict": {"w": weights}, "global_step": 1}, path)
    assert not path.exists()  # still queued: training went on
    weights.add_(100.0)  # the next optimizer step changes the parameters in place
    held.release.set()
    io.wait()
    assert torch.equal(load(path)["state_dict"]["w"], torch.arange(4.0)) and verify_checkpoint(path) is None
    assert io.seconds_writing > 0 and io.seconds_waiting < io.seconds_writing + 10
    io.teardown()


def test_a_failed_background_write_fails_the_next_save_and_the_end_of_the_fit(tmp_path):
    io = BackgroundCheckpointIO()
    held = _HeldWriter(io, fail=True)
    io.save_checkpoint({"w": torch.zeros(2)}, tmp_path / "step_0000001.ckpt")
    held.release.set()
    with pytest.raises(OSError, match="No space left on device"):
        io.wait()
    with pytest.raises(OSError, match="No space left on device"):
        io.save_checkpoint({"w": torch.zeros(2)}, tmp_path / "step_0000002.ckpt")
    with pytest.raises(OSError, match="No space left on device"):
        io.teardown()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written left behind


def test_removing_loading_and_requeue_checkpoints_wait_for_pending_writes(tmp_path):
    import threading

    io = BackgroundCheckpointIO()
    held = _HeldWriter(io)
    old = tmp_path / "step_0000001.ckpt"
    io.save_checkpoint({"w": torch.ones(2)}, old)
    # a removal queued behind the write must not run first (the write would put the file back afterwards)
    remover = threading.Thread(target=io.remove_checkpoint, args=(old,))
    remover.start()
    remover.join(0.3)
    assert remover.is_alive()  # waiting for the write
    held.release.set()
    remover.join(10)
    assert not old.exists() and not sidecar_path(old).exists()
    # Lightning's SLURM requeue checkpoint: on disk when save_checkpoint returns (the job may be killed next)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    io.save_checkpoint({"w": torch.ones(2)}, hpc)
    assert verify_checkpoint(hpc) is None
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.full((2,), 3.0)}}, path)
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.full((2,), 3.0))
    io.teardown()


# ------------------------------------------------------------------------- corrupt checkpoint: fallback
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, one_thread) -> Path:
    """A run directory with step checkpoints at 2 and 4 and last.ckpt (= step 4)."""
    out = tmp_path_factory.mktemp("run")
    train(small_train_cfg(out, "trainer.max_steps=4", "callbacks.checkpoint.every_n_train_steps=2"))
    return out


def copy_run(trained_run: Path, dest: Path) -> Path:
    shutil.copytree(trained_run, dest)  # copy2: modification times kept (they order the candidates)
    return dest


def resume_cfg(tmp_path, run_dir, ckpt="last"):
    return small_train_cfg(
        tmp_path / "new", f"ckpt_path={ckpt}", *([f"resume_dir={run_dir}"] if run_dir else [])
    )


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "truncate_no_sidecar", "delete"])
def test_ckpt_path_last_falls_back_to_newest_good(trained_run, tmp_path, capsys, damage):
    run = copy_run(trained_run, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    elif damage == "flip_byte":  # same size, still a valid zip: only the digest can tell
        flip_a_byte(last)
    elif damage == "truncate_no_sidecar":  # a checkpoint from elsewhere: the structure check catches it
        sidecar_path(last).unlink()
        last.write_bytes(last.read_bytes()[:-100])
    else:
        last.unlink()
    chosen = resolve_ckpt_path(resume_cfg(tmp_path, run), tmp_path / "new")
    assert chosen == str(run / "checkpoints" / "step_0000004.ckpt")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "step_0000004.ckpt" in lines[0] and "last.ckpt" in lines[0], lines
    # ... and training resumes from it.
    cfg = small_train_cfg(tmp_path / "new", "ckpt_path=last", f"resume_dir={run}", "trainer.max_steps=6")
    assert train(cfg)["global_step"] == 6


def test_step_checkpoint_newer_than_last_is_taken(trained_run, tmp_path, capsys):
    # A kill between ModelCheckpoint's step file and its last.ckpt: the step file is newer.
    run = copy_run(trained_run, tmp_path / "run")
    newer = run / "checkpoints" / "step_0000004.ckpt"
    os.utime(newer, (time.time() + 5, time.time() + 5))
    assert resolve_ckpt_path(resume_cfg(tmp_path, run), tmp_path / "new") == str(newer)
    assert "newer than last.ckpt" in capsys.readouterr().err


def test_a_step_checkpoint_further_than_last_is_taken_and_said_so(trained_run, tmp_path, capsys):
    # A kill between ModelCheckpoint's step file and its last.ckpt: last.ckpt still holds the step before.
    run = copy_run(trained_run, tmp_path / "run")
    ckpts = run / "checkpoints"
    for src, dst in (("step_0000002.ckpt", "last.ckpt"), ("step_0000002.ckpt.sha256", "last.ckpt.sha256")):
        shutil.copy(ckpts / src, ckpts / dst)  # copy: last.ckpt is now the newest file, but of step 2
    assert resolve_ckpt_path(resume_cfg(tmp_path, run), tmp_path / "new") == str(ckpts / "step_0000004.ckpt")
    assert "(it holds step 4, last.ckpt step 2)" in capsys.readouterr().err


def test_a_resume_reads_each_checkpoints_step_once_and_a_rewritten_file_again(
    trained_run, tmp_path, monkeypatch
):
    run = copy_run(trained_run, tmp_path / "run")
    ckpts = run / "checkpoints"
    # last.ckpt of step 2, so that the chosen step checkpoint's step and last.ckpt's are both read and compared
    shutil.copy(ckpts / "step_0000002.ckpt", ckpts / "last.ckpt")
    shutil.copy(ckpts / "step_0000002.ckpt.sha256", ckpts / "last.ckpt.sha256")
    reads: list[str] = []
    load = checkpointing.load_checkpoint_file
    monkeypatch.setattr(
        checkpointing,
        "load_checkpoint_file",
        lambda path, *a, **k: reads.append(Path(path).name) or load(path, *a, **k),
    )
    assert resolve_ckpt_path(resume_cfg(tmp_path, run), tmp_path / "new") == str(ckpts / "step_0000004.ckpt")
    assert sorted(reads) == ["last.ckpt", "step_0000002.ckpt", "step_0000004.ckpt"]
    # A file replaced by another (an atomic write: a new inode) is read again, not answered from memory.
    shutil.copy(ckpts / "step_0000004.ckpt", tmp_path / "next.ckpt")
    os.replace(tmp_path / "next.ckpt", ckpts / "last.ckpt")
    assert checkpointing.trained_step(ckpts / "last.ckpt") == 4 and reads[-1] == "last.ckpt"


def test_a_run_copied_without_its_file_times_resumes_from_its_furthest_step(trained_run, tmp_path, capsys):
    # `cp -r` (no -p) or a sync gives the files the times of the copy, in copy order: step 2 may look newest.
    run = copy_run(trained_run, tmp_path / "run")
    for i, name in enumerate(["step_0000004.ckpt", "last.ckpt", "step_0000002.ckpt"]):
        os.utime(run / "checkpoints" / name, (time.time() + i, time.time() + i))
    assert resolve_ckpt_path(resume_cfg(tmp_path, run), tmp_path / "new") == str(
        run / "checkpoints" / "last.ckpt"
    )
    assert capsys.readouterr().err == ""


def test_whole_last_ckpt_is_used_silently(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    assert resolve_ckpt_path(resume_cfg(tmp_path, run), tmp_path / "new") == str(
        run / "checkpoints" / "last.ckpt"
    )
    assert capsys.readouterr().err == ""


def test_no_whole_checkpoint_is_one_error(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        flip_a_byte(ckpt)
    chosen, skipped = newest_good_checkpoint(run / "checkpoints")
    assert chosen is None and len(skipped) == 3
    with pytest.raises(CheckpointError, match="no whole checkpoint") as err:
        resolve_ckpt_path(resume_cfg(tmp_path, run), tmp_path / "new")
    assert "\n" not in str(err.value)


def test_explicit_corrupt_checkpoint_is_one_error(trained_run, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes((trained_run / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot be resumed from: unreadable") as err:
        train(resume_cfg(tmp_path, None, ckpt=bad))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "new" / "checkpoints").exists()


def test_checkpoint_of_another_network_is_one_error(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    cfg = small_train_cfg(tmp_path / "new", f"ckpt_path={ckpt}", "model.base_channels=16")
    with pytest.raises(CheckpointError, match="holds another network \\(UNet") as err:
        train(cfg)
    assert "\n" not in str(err.value) and "resume with the model and data options" in str(err.value)


# ------------------------------------------------------------------------ a checkpoint is data, never code
class RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: what a crafted checkpoint could do with any callable."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def crafted(trained_run, tmp_path) -> tuple[Path, Path]:
    """(a checkpoint whose loading with pickle would create ``marker``, marker): our real checkpoint plus one
    extra entry, with a valid sidecar so that only loading it can tell."""
    marker = tmp_path / "code_ran"
    ckpt = load(trained_run / "checkpoints" / "last.ckpt")
    ckpt["payload"] = RunsCode(marker)
    path = tmp_path / "crafted.ckpt"
    atomic_torch_save(ckpt, path)
    torch.load(path, weights_only=False)  # the file really runs code when unpickled ...
    assert marker.exists()
    marker.unlink()  # ... so every entry below must refuse it before unpickling that entry
    return path, marker


def refusal(err: BaseException | str) -> str:
    message = str(err)
    assert "\n" not in message and "never holds; refusing to load it (it could run code)" in message, message
    return message


def test_crafted_checkpoint_is_refused_by_every_loader(crafted, tmp_path):
    path, marker = crafted
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert refusal(err.value).startswith(f"ckpt={str(path)!r} contains ")
    with pytest.raises(CheckpointError) as err:
        AtomicCheckpointIO().load_checkpoint(path)  # what Lightning's trainer.fit(ckpt_path=...) calls
    refusal(err.value)
    sidecar_path(path).unlink()  # without a sidecar verify_checkpoint reads the file
    refusal(verify_checkpoint(path))
    with pytest.raises(CheckpointError) as err:
        train(resume_cfg(tmp_path, None, ckpt=path))
    refusal(err.value)
    assert not marker.exists()


def test_crafted_checkpoint_with_its_digest_is_refused_on_resume(crafted, tmp_path):
    path, marker = crafted  # the sidecar matches: the resume's own loading must refuse it
    with pytest.raises(CheckpointError) as err:
        train(resume_cfg(tmp_path, None, ckpt=path))
    assert refusal(err.value).startswith(f"ckpt_path={str(path)!r} contains ")
    assert not marker.exists() and not (tmp_path / "new" / "checkpoints").exists()


@pytest.mark.slow  # a subprocess: ~10-20 s of imports
def test_crafted_checkpoint_is_refused_by_the_sample_cli(crafted, tmp_path):
    path, marker = crafted
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_lab.sample", f"ckpt={path}", "n=2"],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    refusal(errors[0])
    assert not marker.exists()


def test_real_checkpoints_load_as_plain_data(tmp_path):
    """A checkpoint of every stateful part (EMA, lr schedule, importance sampling, learned variance) loads with
    weights_only=True, and so does the spec when the module was given OmegaConf nodes and tuples."""
    cfg = small_train_cfg(
        tmp_path / "run",
        "trainer.max_steps=2",
        "final_samples=0",
        "lr_scheduler=warmup_cosine",
        "lr_scheduler.warmup_steps=1",
        "timesteps=importance",
        "loss=hybrid",
        "variance=learned_range",
    )
    from diffusion_lab.checkpointing import load_checkpoint_file

    path = Path(train(cfg)["checkpoint"])
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert {"state_dict", "optimizer_states", "lr_schedulers", "callbacks", CHECKPOINT_KEY} <= set(ckpt)
    assert load_checkpoint_file(path)["global_step"] == 2
    parts, spec, _ = load_checkpoint(path)
    module = build_module(cfg, tuple(spec["data_shape"]), spec["num_classes"])
    module.spec = {**spec, "model": OmegaConf.create(spec["model"]), "data_shape": tuple(spec["data_shape"])}
    extra: dict = {}
    module.on_save_checkpoint(extra)
    torch.save(extra, tmp_path / "extra.pt")
    stored = torch.load(tmp_path / "extra.pt", weights_only=True)[CHECKPOINT_KEY]["spec"]
    assert stored == spec and type(stored["model"]) is dict and type(stored["data_shape"]) is list


# ------------------------------------------------------------------------------------ SIGTERM / SIGUSR1
def cli_overrides(*extra: str) -> list[str]:
    """The CLI equivalent of ``small_train_cfg(...)`` (default model: unet_tiny, a UNet)."""
    return dedupe_overrides([*CPU_ONLY, *SMALL_RUN, *TINY_MODEL["UNet"], *extra])


class SendSignal(L.Callback):
    def __init__(self, signum: int, at_step: int):
        self.signum, self.at_step = signum, at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


def test_sigusr1_saves_stops_and_restores_the_handler(tmp_path, monkeypatch):
    before = signal.getsignal(signal.SIGUSR1)
    add_trainer_callbacks(monkeypatch, SendSignal(signal.SIGUSR1, at_step=5))
    result = train(small_train_cfg(tmp_path, "trainer.max_steps=1000"))
    assert result["preempted"]["signal"] == "SIGUSR1" and result["preempted"]["step"] == 6
    assert result["global_step"] == 6 and "samples_grid" not in result  # no final sampling when preempted
    assert result["preempted"]["resume"].endswith(f"ckpt_path=last resume_dir={tmp_path}")
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert result["checkpoint"] == str(last) and verify_checkpoint(last) is None
    assert load(last)["global_step"] == 6
    assert sorted(p.name for p in last.parent.glob("*.ckpt")) == ["last.ckpt"]  # not rewritten at train end
    assert signal.getsignal(signal.SIGUSR1) == before


def test_a_signal_in_the_step_of_a_step_checkpoint_keeps_that_checkpoint(tmp_path, monkeypatch):
    """A preemption notice during the step at which a step checkpoint falls due: the run keeps that
    ``step_*.ckpt`` beside last.ckpt (the step checkpoints are a run's record of its training, kept for later
    evaluation), and both hold the step."""
    add_trainer_callbacks(monkeypatch, SendSignal(signal.SIGUSR1, at_step=N - 1))
    cfg = small_train_cfg(tmp_path, "trainer.max_steps=1000", f"callbacks.checkpoint.every_n_train_steps={N}")
    result = train(cfg)
    assert result["preempted"]["step"] == N
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["last.ckpt", f"step_{N:07d}.ckpt"]
    for path in folder.glob("*.ckpt"):
        assert verify_checkpoint(path) is None and load(path)["global_step"] == N


class CountValidations(L.Callback):
    def __init__(self):
        self.steps: list[int] = []

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.steps.append(trainer.global_step)


@pytest.mark.parametrize("stop_step", [6, 8], ids=["off_the_schedule", "on_the_schedule"])
def test_a_signal_stop_validates_only_on_the_schedule(tmp_path, monkeypatch, stop_step):
    """Validation every 4 steps; a preemption stop at step 6 runs none (Lightning would validate any early stop,
    spending the grace time), one at step 8 runs the validation due there."""
    seen = CountValidations()
    add_trainer_callbacks(monkeypatch, SendSignal(signal.SIGUSR1, at_step=stop_step - 1), seen)
    validation = ["trainer.val_check_interval=4", "trainer.check_val_every_n_epoch=null"]
    result = train(small_train_cfg(tmp_path, "trainer.max_steps=1000", *validation))
    assert result["preempted"]["step"] == stop_step
    assert seen.steps == list(range(4, stop_step + 1, 4))


def test_sigterm_subprocess_exits_0_and_resumes(tmp_path):
    """A real training process gets SIGTERM after a few steps: exit 0, last.ckpt, the resume command, and a
    resume from it continues at its step."""
    run = tmp_path / "run"
    overrides = cli_overrides(
        "trainer.max_steps=100000",
        f"callbacks.checkpoint.every_n_train_steps={N}",
        "final_samples=0",
        f"hydra.run.dir={run}",
    )
    code, out, err = signal_training(
        tmp_path, overrides, run / "checkpoints" / f"step_{N:07d}.ckpt", signal.SIGTERM
    )
    assert code == 0, err
    assert "Traceback" not in err
    last = run / "checkpoints" / "last.ckpt"
    assert verify_checkpoint(last) is None
    step = load(last)["global_step"]
    assert step >= N
    assert f"SIGTERM received: saved {last} at step {step}" in err
    assert f"stopped by    : SIGTERM at step {step}" in out
    assert "resume with   : python -m diffusion_lab.train " in out
    assert f"ckpt_path=last resume_dir={run}" in out

    resumed = train(
        small_train_cfg(
            tmp_path / "resumed",
            "ckpt_path=last",
            f"resume_dir={run}",
            f"trainer.max_steps={step + 3}",
            "trainer.log_every_n_steps=1",
        )
    )
    assert resumed["global_step"] == step + 3
    with open(resumed["metrics_csv"]) as f:
        import csv

        steps = sorted({int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")})
    assert steps == [step, step + 1, step + 2]  # continues at the saved step


# --------------------------------------------------------------------------------- kill -9 at random points
KILL_SEED = 8
KILLS = 3


def kill_run_overrides(run: Path, max_steps: int) -> list[str]:
    # The exact-resume settings of test_train.py: deterministic, fixed seed, a checkpoint (and a validation)
    # at every epoch end.
    return cli_overrides(
        *EXACT_RESUME,
        f"trainer.val_check_interval={N}",
        f"callbacks.checkpoint.every_n_train_steps={N}",
        f"trainer.max_steps={max_steps}",
        f"hydra.run.dir={run}",
    )


def newest_step(folder: Path) -> int:
    steps = [int(p.stem.split("_")[1].split("-")[0]) for p in folder.glob("step_*.ckpt")]
    return max(steps, default=0)


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_is_bitwise(tmp_path):
    """SIGKILL a training process at random moments (mid-step, mid-validation, mid-save), restart it with
    ``ckpt_path=last`` each time: its final weights equal an uninterrupted run's bit for bit."""
    total = 12 * N  # long enough that the third kill still lands before the end
    run = tmp_path / "killed"
    rng = random.Random(KILL_SEED)
    env = cli_env(tmp_path)
    cmd = [sys.executable, "-m", "diffusion_lab.train"]
    kills: list[dict] = []
    resume: list[str] = []
    for _ in range(KILLS):
        start = newest_step(run / "checkpoints")
        target = start + N * rng.choice([1, 2])  # at least one new checkpoint per life
        delay = rng.uniform(0.0, 1.0)  # then anywhere in the next epoch or so
        proc = subprocess.Popen(
            [*cmd, *kill_run_overrides(run, total), *resume],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 240
        while newest_step(run / "checkpoints") < target:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline
            time.sleep(0.01)
        time.sleep(delay)
        assert proc.poll() is None, "finished before the kill: the run is too short"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append({"resumed_from": start, "killed_after_step_file": target, "delay_s": round(delay, 3)})
        resume = ["ckpt_path=last", f"resume_dir={run}"]
    final_start = newest_step(run / "checkpoints")
    left = sorted(p.name for p in (run / "checkpoints").glob(".*.tmp"))  # a kill that fell during a save
    final = subprocess.run(
        [*cmd, *kill_run_overrides(run, total), *resume],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert final.returncode == 0, final.stderr[-3000:]
    straight = tmp_path / "straight"
    proc = subprocess.run(
        [*cmd, *kill_run_overrides(straight, total)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = load(straight / "checkpoints" / "last.ckpt"), load(run / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == total
    for key in ("state_dict", "current_model_state"):  # the EMA and the live weights
        assert a[key].keys() == b[key].keys()
        assert [k for k in a[key] if not torch.equal(a[key][k], b[key][k])] == [], key
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in opt_a:
        for name, value in opt_a[i].items():
            assert torch.equal(value, opt_b[i][name]), (i, name)
    record = {
        "kills_survived": len(kills),
        "kills": kills,
        "final_life_resumed_from": final_start,
        "temp_files_of_interrupted_saves": left,
        "steps": total,
        "bitwise_equal": True,
    }
    (tmp_path / "kills.json").write_text(json.dumps(record, indent=2))
    print(f"\nkill -9: {json.dumps(record)}")


# ----------------------------------------------------------------------------------- non-finite loss / grad
def inject(monkeypatch, at_step: int, what: str) -> dict:
    """Make the training forward of step ``at_step`` (0-based) return NaN (``what="loss"``), or its gradient
    NaN through a hook on the first parameter (``what="grad"``); returns what the run built and recorded."""
    built: dict = {"live": {}}
    build_module = train_module.build_module

    def capture(*args, **kwargs):
        module = build_module(*args, **kwargs)
        built["module"] = module
        net_forward = module.net.forward
        calls = {"n": 0}

        def forward(*a, **kw):
            out = net_forward(*a, **kw)
            if module.net.training and torch.is_grad_enabled():
                step = calls["n"]
                calls["n"] += 1
                if step == at_step and what == "loss":
                    out = out * float("nan")
                elif step == at_step and what == "grad":
                    hook: dict = {}

                    def nan_once(g):
                        hook["handle"].remove()
                        return g * float("nan")

                    hook["handle"] = next(module.net.parameters()).register_hook(nan_once)
            return out

        module.net.forward = forward
        return module

    monkeypatch.setattr(train_module, "build_module", capture)

    class Record(L.Callback):  # the live weights after each step
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            built["live"][trainer.global_step] = {
                k: v.detach().clone() for k, v in pl_module.net.state_dict().items()
            }

    add_trainer_callbacks(monkeypatch, Record())
    return built


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_nonfinite_skip(tmp_path, monkeypatch, capsys, what):
    built = inject(monkeypatch, at_step=3, what=what)
    result = train(small_train_cfg(tmp_path, "trainer.max_steps=6", "trainer.log_every_n_steps=1"))
    assert result["global_step"] == 6 and result["skipped_steps"] == 1
    assert result["metrics"]["train/skipped_steps"] == 1.0
    live = built["live"]
    # Step 3 (global_step 3 -> 4) changed nothing; the steps around it did.
    assert all(torch.equal(live[3][k], live[4][k]) for k in live[3])
    assert not all(torch.equal(live[4][k], live[5][k]) for k in live[4])
    ema = next(c for c in built["module"].trainer.callbacks if isinstance(c, EMA))
    assert int(ema._average_model.n_averaged) == 5  # the skipped step was not averaged
    ckpt = load(result["checkpoint"])
    assert all_finite(ckpt["state_dict"]) and all_finite(ckpt["current_model_state"])
    assert ckpt[CHECKPOINT_KEY]["skipped_steps"] == 1
    for state in ckpt["optimizer_states"][0]["state"].values():
        assert all(torch.isfinite(v).all() for v in state.values())
    err = capsys.readouterr().err
    expected = (
        "non-finite loss (loss=nan" if what == "loss" else "non-finite gradients (norm=nan, first in net."
    )
    assert f"warning: {expected}" in err and "at step 3: optimizer step skipped" in err, err


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_nonfinite_stop(tmp_path, monkeypatch, what):
    inject(monkeypatch, at_step=2, what=what)
    cfg = small_train_cfg(
        tmp_path, "trainer.max_steps=6", "nonfinite=stop", "callbacks.checkpoint.every_n_train_steps=1"
    )
    with pytest.raises(NonFiniteError) as err:
        train(cfg)
    message = str(err.value)
    assert "\n" not in message and "at step 2 (nonfinite=stop)" in message
    assert message.startswith("non-finite loss (loss=nan" if what == "loss" else "non-finite gradients")
    # Checkpoints of steps 1 and 2 only, all finite: the NaN step never reached one.
    ckpts = sorted((tmp_path / "checkpoints").glob("step_*.ckpt"))
    assert [p.name for p in ckpts] == ["step_0000001.ckpt", "step_0000002.ckpt"]
    for path in ckpts:
        ckpt = load(path)
        assert all_finite(ckpt["state_dict"]) and all_finite(ckpt["current_model_state"])


def test_nonfinite_policy_is_checked():
    with pytest.raises(
        UserError, match=r"nonfinite='ignore' is invalid; choose one of \['skip', 'stop', 'off'\]"
    ):
        train_module.check_config(small_train_cfg("/unused", "nonfinite=ignore"))


def test_checkpoint_writes_option_is_checked():
    with pytest.raises(
        UserError, match=r"checkpoint_writes='async' is invalid; choose one of \['background', 'foreground'\]"
    ):
        train_module.check_config(small_train_cfg("/unused", "checkpoint_writes=async"))


OUT_OF_RANGE = [
    ("trainer.max_steps=0", "an integer >= 1, or -1 (no limit)"),
    ("trainer.max_epochs=0", "an integer >= 1, -1 or null (no limit)"),
    ("trainer.log_every_n_steps=0", "an integer >= 1"),
    ("callbacks.ema.update_every_n_steps=0", "an integer >= 1 (1: every step)"),
    ("optimizer.lr=-0.001", "a number > 0"),
    ("p_uncond=1.0", "in [0, 1) (the share of labels dropped for guidance)"),
    ("final_samples=-1", "an integer >= 0 (0: none)"),
]


@pytest.mark.parametrize("override,allowed", OUT_OF_RANGE)
def test_a_value_out_of_range_is_one_line_naming_what_is_allowed(override, allowed):
    key, value = override.split("=")
    with pytest.raises(UserError) as err:
        train_module.check_config(small_train_cfg("/unused", override))
    assert (
        str(err.value)
        == f"{key}={float(value) if '.' in value else int(value)!r} is out of range; it must be {allowed}"
    )


@pytest.mark.parametrize("value", ["abc", "4:00:00", "60", "{minutes:1}"])
def test_a_max_time_that_is_not_a_duration_is_one_line(value):
    # Lightning's own refusal names no option, and the mapping form fails inside it with "Missing key".
    with pytest.raises(UserError) as err:
        train_module.check_config(small_train_cfg("/unused", f"trainer.max_time={value}"))
    assert str(err.value).startswith("trainer.max_time=") and str(err.value).endswith(
        "is out of range; it must be a duration DD:HH:MM:SS (e.g. 00:04:00:00: four hours), or null"
    )


def test_the_limits_of_each_range_are_accepted():
    edges = ["trainer.max_steps=-1", "trainer.max_epochs=-1", "trainer.max_epochs=null", "p_uncond=0.0"]
    train_module.check_config(small_train_cfg("/unused", *edges, "final_samples=0", "seed=0"))
    train_module.check_config(small_train_cfg("/unused", "trainer.max_time=00:00:00:05"))
    train_module.check_config(small_train_cfg("/unused", "trainer.max_time=null"))


def test_a_sampler_switch_that_is_not_a_boolean_is_refused():
    with pytest.raises(UserError, match=r"^sampler.clip_denoised='abc' must be true or false"):
        train_module.check_config(small_train_cfg("/unused", "sampler.clip_denoised=abc"))


def test_compile_scope_is_checked_when_nothing_compiles():
    with pytest.raises(
        UserError, match=r"compile_scope='block' is invalid; choose one of \['net', 'blocks'\]"
    ):
        train_module.check_config(small_train_cfg("/unused", "compile=false", "compile_scope=block"))


# ------------------------------------------------------------------------------- output dir, value types
def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=f"the output directory {blocker / 'run'} is not writable") as err:
        check_output_dir(blocker / "run")  # cannot be created, even as root
    assert "\n" not in str(err.value) and "paths.root_dir" in str(err.value)
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(UserError, match="not writable"):
                check_output_dir(ro)
        finally:
            ro.chmod(0o700)
    # Through train(): before any work, nothing written.
    with pytest.raises(UserError, match="not writable"):
        train(small_train_cfg(blocker / "run"))
    assert blocker.read_text() == "not a folder"


WRONG_TYPES = [
    ("trainer.max_steps=abc", "trainer.max_steps='abc' must be an integer"),
    ("optimizer.lr=fast", "optimizer.lr='fast' must be a number"),
    ("schedule.num_timesteps=1.5", "schedule.num_timesteps=1.5 must be an integer"),
    ("data.batch_size=true", "data.batch_size=True must be an integer"),
    ("trainer.gradient_clip_val=big", "trainer.gradient_clip_val='big' must be a number or null"),
]


def test_reliability_doc_quotes_the_number_of_type_cases():
    assert len(WRONG_TYPES) == documented_count(r"test_wrong_value_type_is_one_line` \((\d+) cases\)")


@pytest.mark.parametrize("override,match", WRONG_TYPES)
def test_wrong_value_type_is_one_line(tmp_path, override, match):
    with pytest.raises(UserError, match=match.replace("(", r"\(")) as err:
        train(small_train_cfg(tmp_path / "run", override))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_nonfinite_skip_on_device_with_a_fused_optimizer(tmp_path, monkeypatch):
    """Fused AdamW skips on a device-side flag (no host sync per step): the weights, the moments and the step
    count are untouched by the bad step, and the skipped steps are still counted."""
    built = inject(monkeypatch, at_step=3, what="grad")
    cfg = small_train_cfg(
        tmp_path, "trainer.max_steps=6", "trainer.log_every_n_steps=1", "+optimizer.fused=true"
    )
    result = train(cfg)
    assert result["global_step"] == 6 and result["skipped_steps"] == 1
    live = built["live"]
    assert all(torch.equal(live[3][k], live[4][k]) for k in live[3])
    assert not all(torch.equal(live[4][k], live[5][k]) for k in live[4])
    ckpt = load(result["checkpoint"])
    assert all_finite(ckpt["state_dict"]) and all_finite(ckpt["current_model_state"])
    assert ckpt[CHECKPOINT_KEY]["skipped_steps"] == 1
    for state in ckpt["optimizer_states"][0]["state"].values():
        assert all(torch.isfinite(v).all() for v in state.values())
        assert float(state["step"]) == 5  # the skipped step did not count


def test_a_kill_while_the_metrics_file_is_rewritten_leaves_it_whole(tmp_path, monkeypatch):
    """A new metric adds a column, and the CSV writer rewrites the whole file: interrupted, it keeps the old."""
    import csv

    from diffusion_lab.metrics_csv import _ContinuedWriter

    writer = _ContinuedWriter(str(tmp_path), None)
    for step in (0, 1):
        writer.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        writer.save()
    before = (tmp_path / "metrics.csv").read_text()

    def killed(self, rows):
        raise KeyboardInterrupt

    monkeypatch.setattr(csv.DictWriter, "writerows", killed)
    writer.log_metrics({"val/loss": 0.5}, step=2)
    with pytest.raises(KeyboardInterrupt):
        writer.save()
    assert (tmp_path / "metrics.csv").read_text() == before and before.count("\n") == 3
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary file left behind
