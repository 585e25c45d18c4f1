"""End-to-end training: every experiment config, the default run's artefacts, DDP on the CPU, exact resume,
the EMA, and bad input at start-up."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import (
    cli_env,
    compose_train,
    group_options,
    small_train_cfg,
)
from diffusion_lab import training as train_module
from diffusion_lab.build import build_parts, load_checkpoint
from diffusion_lab.callbacks import EMA
from diffusion_lab.data.datasets import TOY_KINDS
from diffusion_lab.errors import UserError
from diffusion_lab.module import CHECKPOINT_KEY
from diffusion_lab.train import CONFIG_DIR, train

pytestmark = pytest.mark.usefixtures("one_thread")


def read_metrics(csv_path: str | Path, key: str = "train/loss") -> dict[int, float]:
    """``{step: value}`` of one logged metric in a CSVLogger metrics file."""
    with open(csv_path) as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


# ---------------------------------------------------------------------------------- experiment configs
@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_runs(experiment, tmp_path, fake_cifar_root, request):
    overrides = [f"experiment={experiment}", f"paths.cache_dir={tmp_path / 'cache'}"]
    composed = compose_train(overrides)
    if composed.data.name == "cifar10":
        overrides.append(f"data.root={fake_cifar_root}")
    if composed.autoencoder == "required":  # a latent-diffusion experiment
        overrides.append(f"autoencoder={request.getfixturevalue('tiny_autoencoder')}")
    cfg = small_train_cfg(tmp_path / "run", *overrides, fast_dev_run=True)
    result = train(cfg)
    assert result["global_step"] == 1
    assert result["output_dir"] == str(tmp_path / "run")
    assert torch.isfinite(torch.tensor(result["metrics"]["train/loss"]))
    if cfg.task.name == "autoencoder":  # held-out images above their reconstructions
        assert Path(result["reconstructions_grid"]).is_file() and "samples_grid" not in result
    elif cfg.data.name not in TOY_KINDS:  # image data: final samples written
        assert Path(result["samples_grid"]).is_file() and Path(result["samples_npz"]).is_file()


# ------------------------------------------------------------------------------------------- default run
def test_default_config_leaves_checkpoint_grid_and_metrics(tmp_path):
    # train.yaml as it is (no experiment: its network, data and T=1000 schedule), for 4 steps.
    overrides = [
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "trainer.log_every_n_steps=2",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "data.limit_train=256",
        "data.val_size=64",
        "callbacks.sample_grid.n=4",
        "sampler.steps=3",
        "final_samples=4",
    ]
    result = train(compose_train(overrides, tmp_path))
    assert result["global_step"] == 4
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    assert result["checkpoint"] == str(checkpoint) and checkpoint.is_file()
    grid = Path(result["samples_grid"])
    assert grid == tmp_path / "samples" / "final.png" and grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "samples" / "step_0000004.png").is_file()  # the validation preview
    metrics = Path(result["metrics_csv"])
    assert metrics.is_relative_to(tmp_path) and metrics.is_file()
    losses = read_metrics(metrics)
    assert sorted(losses) == [1, 3] and all(0 < v < 10 for v in losses.values())
    assert read_metrics(metrics, "val/loss")
    parts, spec, _ = load_checkpoint(checkpoint)
    assert spec["schedule"]["_target_"].endswith("LinearSchedule") and parts.diffusion.num_timesteps == 1000


def test_default_config_uses_the_gpu_where_there_is_one_and_make_train_the_cpu_experiment():
    """`python -m diffusion_lab.train` picks the accelerator (a GPU where there is one); `make train` runs the
    CPU-sized experiment explicitly, with any ARGS after it."""
    default = compose_train()
    assert default.trainer.accelerator == "auto" and default.trainer.max_time is None
    repo = Path(CONFIG_DIR).parent
    # Run inside `make test` too: the outer make's flags (-w: "Entering directory" lines) must not leak in.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", "-o", "setup", "train", "ARGS=seed=3"],
        cwd=repo,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    command = proc.stdout.strip().splitlines()[-1].split()
    assert command[1:3] == ["-m", "diffusion_lab.train"]
    assert command[3:] == ["experiment=fmnist_cpu", "seed=3"]
    made = compose_train(command[3:])
    assert made.task_name == "fmnist_cpu" and made.trainer.accelerator == "cpu" and made.seed == 3


# --------------------------------------------------------------------------------------------------- DDP
def test_ddp_sim_trains_and_checkpoint_loads(tmp_path):
    cfg = small_train_cfg(tmp_path, "trainer=ddp_sim", "trainer.max_steps=3")
    result = train(cfg)
    # ddp_spawn trains in 2 worker processes; the result still reports their steps and checkpoint.
    assert result["global_step"] == 3
    assert result["checkpoint"] == str(tmp_path / "checkpoints" / "last.ckpt")
    parts, spec, ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt["global_step"] == 3
    assert spec["data_shape"] == [1, 28, 28]
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert parts.net(x, torch.tensor([0, 49])).shape == x.shape
    # The EMA (in state_dict) and live weights (current_model_state) both come back from the workers.
    assert ckpt["state_dict"].keys() == ckpt["current_model_state"].keys()
    assert any(not torch.equal(ckpt["state_dict"][k], v) for k, v in ckpt["current_model_state"].items())


# ------------------------------------------------------------------------------------------ exact resume
N = 4  # batches per epoch: limit_train 64 / batch 16


def resume_overrides(timesteps: str, saved: str) -> list[str]:
    common = [
        f"timesteps={timesteps}",
        "trainer.deterministic=true",
        "seed=7",
        "data.batch_size=16",
        "++data.limit_train=64",
        # A validation (with its sample-grid preview) at every epoch end, the resume point.
        f"trainer.val_check_interval={N}",
        "trainer.log_every_n_steps=1",
        "final_samples=0",
    ]
    # "step": last.ckpt written at the resume point by the every-N-steps save; "train_end": by ModelCheckpoint's
    # save_last at the end of fit (after the EMA callback has copied the average into the module).
    common.append(f"callbacks.checkpoint.every_n_train_steps={N if saved == 'step' else 1000}")
    if timesteps == "importance":
        # Few timesteps and a short history: the sampler is warmed up (non-uniform) by the resume point, so
        # the second half depends on the restored history.
        common += ["schedule.num_timesteps=10", "timesteps.history=2"]
    return common


def weights(ckpt_path: str) -> tuple[dict, dict, dict]:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    return ckpt["state_dict"], ckpt["current_model_state"], ckpt[CHECKPOINT_KEY]["timesteps"]


@pytest.mark.parametrize(
    "timesteps,saved", [("uniform", "step"), ("importance", "step"), ("uniform", "train_end")]
)
def test_exact_resume(timesteps, saved, tmp_path):
    """N steps, then a new run from its last.ckpt to 2N, ends bit for bit where 2N straight steps end."""
    common = resume_overrides(timesteps, saved)
    straight = train(small_train_cfg(tmp_path / "straight", *common, f"trainer.max_steps={2 * N}"))
    first = train(small_train_cfg(tmp_path / "first", *common, f"trainer.max_steps={N}"))
    half = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(half, weights_only=False)["global_step"] == N
    ema_half, live_half, ts_half = weights(str(half))
    assert any(not torch.equal(ema_half[k], v) for k, v in live_half.items()), "live weights == EMA"
    resumed = train(
        small_train_cfg(tmp_path / "resumed", *common, f"trainer.max_steps={2 * N}", f"ckpt_path={half}")
    )
    assert straight["global_step"] == resumed["global_step"] == 2 * N

    ema_a, live_a, ts_a = weights(straight["checkpoint"])
    ema_b, live_b, ts_b = weights(resumed["checkpoint"])
    assert ema_a.keys() == ema_b.keys() and live_a.keys() == live_b.keys()
    assert [k for k in ema_a if not torch.equal(ema_a[k], ema_b[k])] == []  # bitwise
    assert [k for k in live_a if not torch.equal(live_a[k], live_b[k])] == []
    assert ts_a.keys() == ts_b.keys()
    for key in ts_a:
        assert torch.equal(ts_a[key], ts_b[key]), key
    if timesteps == "importance":
        assert (ts_half["loss_counts"] == 2).all(), "not warmed up at the resume point: the test is too weak"
        assert not torch.equal(ts_half["loss_history"], ts_a["loss_history"])

    logged = read_metrics(straight["metrics_csv"])
    assert sorted(logged) == list(range(2 * N))
    assert read_metrics(first["metrics_csv"]) == {s: v for s, v in logged.items() if s < N}
    assert read_metrics(resumed["metrics_csv"]) == {s: v for s, v in logged.items() if s >= N}
    val_straight = read_metrics(straight["metrics_csv"], "val/loss")
    assert read_metrics(resumed["metrics_csv"], "val/loss") == {
        s: v for s, v in val_straight.items() if s >= N
    }


# --------------------------------------------------------------------------------------------------- EMA
def test_ema_averages_the_network_only(tmp_path, monkeypatch):
    built = {}
    build_module = train_module.build_module

    def capture(*args, **kwargs):
        built["module"] = build_module(*args, **kwargs)
        return built["module"]

    monkeypatch.setattr(train_module, "build_module", capture)
    result = train(small_train_cfg(tmp_path, "trainer.max_steps=6", "callbacks.ema.decay=0.9"))
    module = built["module"]

    # The schedule is a plain object: bit for bit the tables a fresh one has.
    fresh = build_parts(module.spec).diffusion.schedule
    tables = {k: v for k, v in vars(fresh).items() if isinstance(v, torch.Tensor)}
    assert {"betas", "alphas_cumprod", "posterior_variance"} <= tables.keys()
    for name, table in tables.items():
        assert torch.equal(getattr(module.diffusion.schedule, name), table), name

    # The EMA averages exactly the network's parameters (and buffers), nothing else.
    ema = next(c for c in module.trainer.callbacks if isinstance(c, EMA))
    averaged = dict(ema._average_model.module.named_parameters())
    assert averaged.keys() == dict(module.named_parameters()).keys()
    assert all(name.startswith("net.") for name in averaged)
    ckpt = torch.load(result["checkpoint"], map_location="cpu", weights_only=False)
    net_keys = {f"net.{k}" for k in module.net.state_dict()}
    assert ckpt["state_dict"].keys() == ckpt["current_model_state"].keys() == net_keys

    # After a few steps the average differs from the live weights (every floating-point parameter).
    live, avg = ckpt["current_model_state"], ckpt["state_dict"]
    differ = [k for k in net_keys if not torch.equal(live[k], avg[k])]
    assert len(differ) > len(net_keys) // 2
    # After fit the module holds the average (what the final samples and the checkpoint's state_dict use).
    for name, p in module.named_parameters():
        assert torch.equal(p.detach(), avg[name]), name


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_update_matches_the_recursion(warmup):
    """k-th update (1-based): copy at k = 1, then e <- d e + (1 - d) w with d = min(decay, k / (9 + k)) when
    warming up, else decay; recomputed here in float64 from the weights each step saw."""
    from torch.optim.swa_utils import AveragedModel

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    callback = EMA(decay=0.95, warmup=warmup)
    callback._average_model = AveragedModel(net, use_buffers=True)
    expected = None
    for k in range(1, 60):
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn_like(p))
        w = torch.cat([p.detach().flatten() for p in net.parameters()]).double()
        if expected is None:
            expected = w.clone()
        else:
            d = min(0.95, k / (9 + k)) if warmup else 0.95
            expected = d * expected + (1 - d) * w
        callback._update(net)
        got = torch.cat([p.flatten() for p in callback._average_model.module.parameters()]).double()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert int(callback._average_model.n_averaged) == 59
    # Warm-up: far from the init after 59 steps (its weight is prod d_k, < 1e-3 here vs 0.95^58 = 0.05 without).
    assert callback.decay_at(5) == (pytest.approx(6 / 15) if warmup else 0.95)


# --------------------------------------------------------------------------------------------- bad input
def test_ckpt_path_last_without_checkpoint_names_resume_dir(tmp_path):
    cfg = small_train_cfg(tmp_path / "run", "ckpt_path=last", f"resume_dir={tmp_path / 'nothing'}")
    with pytest.raises(UserError, match="resume_dir") as err:
        train(cfg)
    assert str(tmp_path / "nothing" / "checkpoints" / "last.ckpt") in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_incompatible_combination_fails_at_startup(tmp_path):
    cfg = small_train_cfg(tmp_path, "loss=hybrid", "variance=fixed_small")
    with pytest.raises(ValueError, match="loss=hybrid.*variance=fixed_small"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_cli_incompatible_combination_one_error_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_lab.train", "loss=hybrid", "variance=fixed_small"],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "loss=hybrid" in errors[0] and "variance=fixed_small" in errors[0]
    assert not list(tmp_path.rglob("*.ckpt"))


def test_compile_setting_maps_to_torch_compile_modes():
    """One reading of `compile=` for training (DiffusionModule) and evaluate: off, default, or a named mode."""
    from diffusion_lab.compile_policy import compile_mode

    assert [compile_mode(v) for v in (False, None, "false", "none")] == [None] * 4
    assert [compile_mode(v) for v in (True, "true", "default")] == ["default"] * 3
    assert compile_mode("reduce-overhead") == "reduce-overhead"


def test_compile_options_are_the_modes_and_channels_last_forces_inductors_layout_optimization():
    from torch._inductor import list_mode_options

    from diffusion_lab.compile_policy import compile_options
    from diffusion_lab.errors import UserError
    from diffusion_lab.module import DiffusionModule

    for mode in ("default", "reduce-overhead", "max-autotune"):
        assert compile_options(mode) == list_mode_options(mode)
        assert compile_options(mode, channels_last=True) == {
            **list_mode_options(mode),
            "force_layout_optimization": True,
        }
    with pytest.raises(UserError, match=r"compile=fastest is not a torch.compile mode; choose from .*'true'"):
        compile_options("fastest")
    # the module checks its mode when it is built, before any training
    with pytest.raises(UserError, match="compile=fastest"):
        DiffusionModule(None, None, None, None, None, None, compile="fastest")


def test_training_logs_nothing_to_the_progress_bar_and_the_bar_reads_the_loss(tmp_path, monkeypatch):
    """Lightning reads every prog_bar metric back to the host after every step (a device sync per step): training
    logs none, and its terms only on the logger's steps; LossProgressBar shows the module's last loss instead,
    and the run's summary has the final step's loss."""
    from diffusion_lab.callbacks import LossProgressBar, progress
    from diffusion_lab.module import DiffusionModule

    calls: list[tuple[int, str, bool]] = []
    shown: list[dict] = []
    log, get_metrics = DiffusionModule.log, LossProgressBar.get_metrics

    def recording_log(self, name, value, *args, **kwargs):
        if self.trainer.training:
            calls.append((self.trainer.global_step, name, bool(kwargs.get("prog_bar"))))
        return log(self, name, value, *args, **kwargs)

    def recording_get_metrics(self, trainer, pl_module):
        items = get_metrics(self, trainer, pl_module)
        if trainer.training:
            shown.append({"step": trainer.global_step, **items, "expected": pl_module.last_loss()})
        return items

    monkeypatch.setattr(DiffusionModule, "log", recording_log)
    monkeypatch.setattr(LossProgressBar, "get_metrics", recording_get_metrics)
    clock = iter(range(0, 10**6))  # a second per reading: the bar's twice-a-second limit never holds it back
    monkeypatch.setattr(progress, "monotonic", lambda: float(next(clock)))
    cfg = small_train_cfg(
        tmp_path,
        "trainer.max_steps=7",
        "trainer.log_every_n_steps=3",
        "trainer.enable_progress_bar=true",
        "progress_refresh_rate=2",
        "trainer.val_check_interval=100",
        "trainer.limit_val_batches=0",
    )
    result = train(cfg)
    assert result["global_step"] == 7
    assert calls and not [c for c in calls if c[2]], "a training-time metric was logged with prog_bar=True"
    # logger steps: global_step + 1 divisible by 3 (steps 2 and 5), nothing logged on the others
    assert sorted({step for step, name, _ in calls if name == "train/loss"}) == [2, 5]
    assert {step for step, _, _ in calls} == {2, 5}
    # the bar refreshed (every 2 batches) with the module's own loss of that step
    assert shown and all(s["train/loss"] == s["expected"] for s in shown)
    assert all(math.isfinite(s["train/loss"]) for s in shown)
    assert math.isfinite(result["metrics"]["train/loss"])


def test_progress_bar_reads_the_loss_at_most_every_min_read_seconds(monkeypatch):
    """Each read is a host sync on a GPU: a bar refreshing every step reads the loss only every 0.5 s and shows
    the last value read in between."""
    from types import SimpleNamespace

    from diffusion_lab.callbacks import LossProgressBar, progress

    now = [0.0]
    monkeypatch.setattr(progress, "monotonic", lambda: now[0])
    reads = []

    def last_loss():
        reads.append(now[0])
        return 10.0 + len(reads)

    bar = LossProgressBar(refresh_rate=1, min_read_seconds=0.5)
    trainer = SimpleNamespace(loggers=[], progress_bar_metrics={"val/loss": 2.0})
    module = SimpleNamespace(last_loss=last_loss)
    shown = []
    for t in (0.0, 0.1, 0.4, 0.5, 0.7, 1.2):
        now[0] = t
        shown.append(bar.get_metrics(trainer, module))
    assert reads == [0.0, 0.5, 1.2]
    assert [s["train/loss"] for s in shown] == [11.0, 11.0, 11.0, 12.0, 12.0, 13.0]
    assert all(s["val/loss"] == 2.0 for s in shown)  # Lightning's own progress-bar metrics stay
    # a module without last_loss (any LightningModule): the bar shows what Lightning gives it
    assert "train/loss" not in LossProgressBar().get_metrics(trainer, SimpleNamespace())


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_acts_on_the_optimizers_parameters(algorithm):
    """Clipping (and the gradient norm) read the optimizer's parameter lists, not a walk of the module tree."""
    from types import SimpleNamespace

    from diffusion_lab.module import DiffusionModule

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    module = DiffusionModule(net, None, None, None, None, None)
    module._trainer = SimpleNamespace(precision="32-true")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for i, p in enumerate(net.parameters()):
        p.grad = torch.full_like(p, 3.0 + i)
    module.configure_gradient_clipping(optimizer, 0.5, algorithm)
    grads = [p.grad for p in net.parameters()]
    if algorithm == "norm":
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        assert total == pytest.approx(0.5, rel=1e-5)
    else:
        assert all(torch.all(g == 0.5) for g in grads)


class CountHostReads(L.Callback):
    """Records host reads of tensors (see the test below) with the step they fall in, steps 3 .. 10 whole: a step
    runs from its on_train_batch_start to the next one's, so Lightning's own end-of-step work (its logger
    connector) counts in the step it ends."""

    step: int | None = None
    reads: list[tuple[int, str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        CountHostReads.step = trainer.global_step if 3 <= trainer.global_step < 11 else None

    def on_train_end(self, trainer, pl_module):
        CountHostReads.step = None


@pytest.mark.parametrize("timesteps", ["uniform", "importance"])
def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch, timesteps):
    """A host read of a device tensor (.item(), .tolist(), .cpu(), float(), bool()) is a device sync on a GPU:
    it drains the queue and a CUDA-graphed step waits for the host (Lightning reads a prog_bar metric after every
    step, so training logs none). Only the logger's steps may read -- counted here on the CPU, where the same
    calls are made: with fused AdamW (the GPU default, and what lets the non-finite check skip steps on the
    device; torch's per-tensor Adam reads its step counters, CPU tensors even on a GPU) and one epoch of 16
    batches (a DataLoader draws its seed on the host when an epoch starts)."""

    def counted(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            if CountHostReads.step is not None:
                CountHostReads.reads.append((CountHostReads.step, name))
            return original(self, *args, **kwargs)

        return wrapper

    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    CountHostReads.reads = []
    cfg = small_train_cfg(
        tmp_path,
        f"timesteps={timesteps}",
        "+optimizer.fused=true",
        "data.batch_size=4",
        "trainer.max_steps=14",
        "trainer.log_every_n_steps=4",
        "trainer.val_check_interval=100",
        "trainer.limit_val_batches=0",
        f"+callbacks.count_host_reads._target_={__name__}.CountHostReads",
    )
    assert train(cfg)["global_step"] == 14
    logger_steps = {3, 7}  # (global_step + 1) % 4 == 0: the logger reads what it writes
    assert {step for step, _ in CountHostReads.reads} <= logger_steps, sorted(set(CountHostReads.reads))
    assert {step for step, _ in CountHostReads.reads} == logger_steps  # the counting itself works


def test_gradient_clip_val_0_clips_nothing():
    """0 means no clipping, as in Lightning's own clipping (clipping to norm 0 would zero every gradient)."""
    from diffusion_lab.net_training import NetTraining

    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = torch.tensor([1.0, -2.0, 3.0])
    NetTraining().configure_gradient_clipping(torch.optim.SGD([param], lr=0.1), gradient_clip_val=0)
    assert torch.equal(param.grad, torch.tensor([1.0, -2.0, 3.0]))
