"""`ckpt_path=last resume_dir=RUN` continues RUN: in RUN, with RUN's stored config, one metrics.csv, the data
order resumed mid-epoch, the original record kept; only overrides about length, logging and output apply."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import add_trainer_callbacks, compose_train, small_train_cfg
from diffusion_lab.errors import UserError
from diffusion_lab.provenance import code_sha256
from diffusion_lab.resume import RESUMABLE, resume_argv
from diffusion_lab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

# 4 batches an epoch (limit_train 64 / batch 16): chunks of 2 steps resume mid-epoch and at an epoch's end.
COMMON = ["trainer.log_every_n_steps=1", "trainer.val_check_interval=3", "final_samples=0", "seed=3"]


def logged_steps(path: Path) -> list[tuple[int, float]]:
    with open(path) as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


def test_resume_in_chunks_continues_one_run(tmp_path, recwarn):
    straight = train(small_train_cfg(tmp_path / "straight", *COMMON, "trainer.max_steps=6"))
    run = tmp_path / "run"
    train(small_train_cfg(run, *COMMON, "trainer.max_steps=2"))
    original = (run / ".hydra" / "config.yaml").read_text()
    provenance = (run / ".hydra" / "provenance.yaml").read_text()
    for steps in (4, 6):  # a larger max_steps at each resume is applied
        cfg = small_train_cfg(
            tmp_path / "elsewhere", "ckpt_path=last", f"resume_dir={run}", f"trainer.max_steps={steps}"
        )
        result = train(cfg)
        assert result["global_step"] == steps and result["output_dir"] == str(run)
    assert not (tmp_path / "elsewhere").exists()
    # one metrics file, every step once, bit for bit the straight run's losses (the data order resumed too)
    assert sorted(p.name for p in (run / "csv").iterdir()) == ["hparams.yaml", "metrics.csv"]
    assert result["metrics_csv"] == str(run / "csv" / "metrics.csv")
    assert logged_steps(run / "csv" / "metrics.csv") == logged_steps(straight["metrics_csv"])
    assert [s for s, _ in logged_steps(straight["metrics_csv"])] == list(range(6))
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    ref = torch.load(straight["checkpoint"], weights_only=False)
    assert [
        k for k in ref["state_dict"] if not torch.equal(ref["state_dict"][k], last["state_dict"][k])
    ] == []
    # the run's record is kept; each resume's overrides and config beside it
    assert (run / ".hydra" / "config.yaml").read_text() == original
    assert "trainer.max_steps=6" in (run / ".hydra" / "resume_2" / "overrides.yaml").read_text()
    assert "max_steps: 4" in (run / ".hydra" / "resume_1" / "config.yaml").read_text()
    # and the code each part ran with: the run's provenance kept, each resume's beside its config
    assert (run / ".hydra" / "provenance.yaml").read_text() == provenance
    for part in ("provenance.yaml", "resume_1/provenance.yaml", "resume_2/provenance.yaml"):
        assert OmegaConf.load(run / ".hydra" / part).code_sha256 == code_sha256()
    assert not [w for w in recwarn if "not resumable" in str(w.message)]


class Preempt(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 1:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.fixture
def preempted_run(tmp_path, monkeypatch) -> Path:
    """A run of max_steps 5 (its other settings not the defaults) preempted at step 2."""
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        add_trainer_callbacks(m, Preempt())
        result = train(small_train_cfg(run, *COMMON, "trainer.max_steps=5", "final_samples=3"))
    assert result["preempted"]["step"] == 2
    return run


def test_resume_without_overrides_uses_the_runs_config(preempted_run):
    # Composed as `python -m diffusion_lab.train ckpt_path=last resume_dir=RUN`: the defaults (another network,
    # max_steps, final_samples) are not the run's; the run's own config is used.
    result = train(
        compose_train(["ckpt_path=last", f"resume_dir={preempted_run}"], preempted_run.parent / "x")
    )
    assert result["global_step"] == 5 and result["output_dir"] == str(preempted_run)
    assert len(np.load(result["samples_npz"])["images"]) == 3


def test_a_callback_removed_at_a_resume_is_left_out_of_it(preempted_run):
    overrides = ["ckpt_path=last", f"resume_dir={preempted_run}", "~callbacks.sample_grid"]
    cfg = compose_train(overrides, preempted_run.parent / "x")
    result = train(cfg)
    assert result["global_step"] == 5
    resumed = OmegaConf.load(preempted_run / ".hydra" / "resume_1" / "config.yaml")
    assert "sample_grid" not in resumed.callbacks and "ema" in resumed.callbacks
    assert (
        "sample_grid" in OmegaConf.load(preempted_run / ".hydra" / "config.yaml").callbacks
    )  # the run's own


def test_resume_refuses_an_override_of_the_model_or_process(preempted_run):
    overrides = ["ckpt_path=last", f"resume_dir={preempted_run}", "schedule=cosine"]
    with pytest.raises(UserError) as err:
        train(compose_train(overrides, preempted_run.parent / "x"))
    assert str(err.value) == (
        f"schedule=cosine: cannot change schedule (the run in {preempted_run} has 'linear') when resuming; a "
        f"resume may change only {', '.join(RESUMABLE[2:])}; start a new run for another schedule"
    )
    assert not (preempted_run / ".hydra" / "resume_1").exists()
    with pytest.raises(UserError, match=r"^seed=4: cannot change seed \(the run in .* has 3\)"):
        train(compose_train([*overrides[:2], "seed=4"], preempted_run.parent / "x"))
    # the same value as the run's is no change: accepted (the resume command printed at a preemption repeats them)
    result = train(compose_train([*overrides[:2], "schedule.num_timesteps=50"], preempted_run.parent / "x"))
    assert result["global_step"] == 5


def test_resume_argv_runs_hydra_in_the_run_directory():
    argv = ["train.py", "ckpt_path=last", "resume_dir=outputs/r", "trainer.max_steps=9"]
    assert resume_argv(argv) == [*argv, "hydra.run.dir=outputs/r", "hydra.output_subdir=null"]
    assert resume_argv([*argv, "hydra.run.dir=outputs/r"]) == [
        *argv,
        "hydra.run.dir=outputs/r",
        "hydra.output_subdir=null",
    ]
    assert (
        resume_argv(["train.py", "ckpt_path=last", "hydra.run.dir=outputs/r"])[-1]
        == "hydra.output_subdir=null"
    )
    for other in (["train.py", "resume_dir=outputs/r"], ["train.py", "ckpt_path=last"], [*argv, "-m"]):
        assert resume_argv(other) == other


@pytest.mark.parametrize("kind", ["loader", "device_batches"])
def test_training_loader_resumes_mid_epoch(kind):
    """A training loader restored from its state (at an epoch's 3rd batch, 2 of them trained) yields the rest of
    that epoch, then the next epochs exactly as the uninterrupted loader does."""
    from diffusion_lab.data.datamodule import DeviceBatches, ResumableLoader
    from diffusion_lab.data.datasets import PointDataset

    data = PointDataset(torch.arange(40.0).reshape(20, 2), torch.arange(20))

    def make(trained):
        if kind == "loader":
            return ResumableLoader(
                data, batch_size=4, shuffle=True, drop_last=True, order_seed=11, trained=trained
            )
        return DeviceBatches(data, batch_size=4, device="cpu", order_seed=11, trained=trained)

    def epoch(loader):
        return [y.tolist() for _, y in loader]

    straight = make(lambda: 0)
    epochs = [epoch(straight) for _ in range(3)]
    assert epochs[0] != epochs[1] and sorted(sum(epochs[0], [])) == list(range(20))
    interrupted = make(lambda: 2)
    first = iter(interrupted)
    next(first), next(first), next(first)  # two trained, one prefetched
    state = interrupted.state_dict()
    resumed = make(lambda: 2)
    resumed.load_state_dict(state)
    assert epoch(resumed) == epochs[0][2:]
    assert [epoch(resumed) for _ in range(2)] == epochs[1:]


def test_resume_accepts_the_runs_experiment_and_refuses_another(preempted_run):
    """`experiment=X` at resume: the run's own experiment is accepted without repeating its other overrides
    (the run's data.batch_size=16 is not the experiment's); another experiment is refused."""
    base = ["ckpt_path=last", f"resume_dir={preempted_run}"]
    assert (
        train(compose_train([*base, "experiment=fmnist_cpu"], preempted_run.parent / "x"))["global_step"] == 5
    )
    with pytest.raises(
        UserError, match=r"^experiment=fmnist: cannot change experiment \(the run in .* has 'fmnist_cpu'\)"
    ):
        train(compose_train([*base, "experiment=fmnist"], preempted_run.parent / "x"))


def _guard_message(run: Path) -> str:
    return (
        f"the run directory {run} already holds a run (checkpoints/last.ckpt, step_0000004.ckpt); continue it "
        f"with ckpt_path=last resume_dir={run}, or start the new run in another directory (hydra.run.dir)"
    )


def test_a_new_run_is_refused_in_a_folder_that_holds_one(tmp_path):
    run = tmp_path / "run"
    cfg = small_train_cfg(run, "trainer.max_steps=4", "callbacks.checkpoint.every_n_train_steps=4")
    train(cfg)
    kept = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(UserError) as err:
        train(cfg)
    assert str(err.value) == _guard_message(run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == kept
    # Continuing it is what the message says to do, and works.
    resumed = train(
        compose_train(["ckpt_path=last", f"resume_dir={run}", "trainer.max_steps=6"], tmp_path / "x")
    )
    assert resumed["global_step"] == 6


@pytest.mark.slow  # two training processes: ~20 s on 2 cores
def test_the_command_line_refuses_it_before_hydra_rewrites_the_runs_record(tmp_path):
    import subprocess
    import sys

    from conftest import cli_env
    from sweeps import tiny_run

    run = tmp_path / "run"
    args = [
        *tiny_run("trainer.max_steps=4", "callbacks.checkpoint.every_n_train_steps=4"),
        f"hydra.run.dir={run}",
    ]
    command = [sys.executable, "-m", "diffusion_lab.train", *args]
    first = subprocess.run(command, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    kept = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    again = subprocess.run(
        [*command, "seed=7"], env=cli_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.strip() == f"error: {_guard_message(run)}"
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == kept  # .hydra/ and the log too
