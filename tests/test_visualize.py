"""diffusion_lab.visualize: every figure writes a PNG, and the numbers saved beside it are the quantities the
library computes (recomputed here from the saved seed)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli_env, compose_train, small_train_cfg
from diffusion_lab.build import load_checkpoint
from diffusion_lab.diffusion import (
    SCHEDULES,
    SquareMask,
    build_schedule,
    calc_bpd_loop,
    parse_respacing,
    q_sample,
)
from diffusion_lab.errors import friendly_errors
from diffusion_lab.figures import FIGURES, radial_power_spectrum
from diffusion_lab.visualize import FIGURE_NAMES, FIGURE_SUMMARIES, visualize

pytestmark = pytest.mark.usefixtures("one_thread")

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST is not at /usr/share/datasets")


def vis_cfg(out_dir: Path, *overrides: str):
    return compose_train([f"out_dir={out_dir}", "device=cpu", *overrides], config_name="visualize")


def check_png(path: str | Path) -> tuple[int, int]:
    path = Path(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        assert img.width > 200 and img.height > 200
        assert np.asarray(img.convert("L")).std() > 5  # not blank
        return img.size


def real_images(n: int) -> torch.Tensor:
    from hydra.utils import instantiate

    return instantiate(compose_train([], config_name="visualize").data).real_images("test", n)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("trained")
    cfg = small_train_cfg(out, "schedule=cosine", "trainer.max_steps=1", "final_samples=0")
    return Path(train_checkpoint(cfg))


def train_checkpoint(cfg) -> str:
    from diffusion_lab.train import train

    return train(cfg)["checkpoint"]


# ------------------------------------------------------------------------------------------------ figures
@needs_fmnist
def test_forward(tmp_path):
    result = visualize(
        vis_cfg(tmp_path, "figure=forward", "n=3", "t=[0,100,999]", "seed=5", "schedule=sigmoid")
    )
    assert result["png"] == str(tmp_path / "forward.png") and result["data"] == str(tmp_path / "forward.npz")
    check_png(result["png"])
    saved = np.load(result["data"])
    schedule = build_schedule("sigmoid", 1000)
    x0 = real_images(3)
    assert np.array_equal(saved["x0"], x0.numpy())
    assert saved["timesteps"].tolist() == [0, 100, 999] and int(saved["seed"]) == 5
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    for k, t in enumerate([0, 100, 999]):
        expected = q_sample(schedule, x0, torch.full((3,), t), noise)
        assert np.array_equal(saved["xt"][:, k], expected.numpy())
    assert np.array_equal(saved["alphas_cumprod"], schedule.alphas_cumprod[[0, 100, 999]].numpy())


def test_forward_draws_a_cold_degradation(tmp_path):
    """process=cold degradation=mask: the figure goes through process.corrupt, so it shows the degradation
    D(x_0, t) (tested against its own derivation in test_cold_diffusion.py)."""
    overrides = ["figure=forward", "n=2", "t=[0,24,49]", "process=cold", "degradation=mask"]
    result = visualize(vis_cfg(tmp_path, *overrides))
    check_png(result["png"])
    saved = np.load(result["data"])
    x0 = real_images(2)
    assert np.array_equal(saved["x0"], x0.numpy()) and saved["timesteps"].tolist() == [0, 24, 49]
    assert "SquareMask(num_timesteps=50)" in str(saved["process"]) and "alphas_cumprod" not in saved
    for k, t in enumerate([0, 24, 49]):
        assert np.array_equal(saved["xt"][:, k], SquareMask(50)(x0, torch.full((2,), t)).numpy())
    assert np.allclose(saved["xt"][:, 2], x0.mean(dim=(2, 3), keepdim=True).expand_as(x0).numpy(), atol=1e-6)


def test_schedules(tmp_path):
    result = visualize(vis_cfg(tmp_path, "figure=schedules", "schedule.num_timesteps=100", "name=sched"))
    check_png(result["png"])
    assert result["data"] == str(tmp_path / "sched.csv")
    with open(result["data"]) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["t"]) for r in rows] == list(range(100))
    for name in SCHEDULES:
        s = build_schedule(name, 100)
        for key in ("alphas_cumprod", "snr", "log_snr"):
            column = np.array([float(r[f"{name}_{key}"]) for r in rows])
            assert np.array_equal(column, getattr(s, key).numpy()), (name, key)  # exact: floats round-trip


def test_radial_power_spectrum():
    g = torch.Generator().manual_seed(0)
    # white noise of variance 4: power 4 at every frequency (orthonormal FFT)
    freq, power, counts = radial_power_spectrum(2.0 * torch.randn(64, 1, 32, 32, generator=g))
    assert freq.tolist() == [k / 32 for k in range(17)]
    assert np.allclose(power[1:], 4.0, rtol=0.1)
    assert counts.sum() < 32 * 32 and counts[0] == 1
    # a plane wave of 5 cycles across the image: all of its power at radius 5
    x = torch.cos(2 * torch.pi * 5 * torch.arange(32) / 32).expand(1, 1, 32, 32)
    freq, power, counts = radial_power_spectrum(x)
    assert np.argmax(power) == 5 and (power * counts)[5] / (power * counts).sum() > 0.999


@needs_fmnist
def test_spectrum(tmp_path):
    ts = [0, 20, 100, 300, 600, 999]
    result = visualize(vis_cfg(tmp_path, "figure=spectrum", "n=32", f"t=[{','.join(map(str, ts))}]"))
    check_png(result["png"])
    saved = np.load(result["data"])
    assert saved["timesteps"].tolist() == ts
    schedule = build_schedule("linear", 1000)
    x0 = real_images(32)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(int(saved["seed"])))
    freq, p0, counts = radial_power_spectrum(x0)
    assert np.array_equal(saved["freq"], freq) and np.allclose(saved["power_x0"], p0, rtol=1e-12)
    for k, t in enumerate(ts):
        _, p, _ = radial_power_spectrum(q_sample(schedule, x0, torch.full((32,), t), noise))
        assert np.allclose(saved["power"][k], p, rtol=1e-12)
        abar = float(schedule.alphas_cumprod[t])
        assert np.allclose(saved["signal_share"][k], abar * p0 / (abar * p0 + 1 - abar), rtol=1e-12)
    # images concentrate their power at low frequencies; the white noise does not, so with t
    hf = saved["high_freq_fraction"]
    assert np.all(np.diff(hf) > 0)  # x_t's power moves to high frequencies,
    high = saved["signal_share"][:, freq > 0.25].mean(axis=1)
    assert np.all(np.diff(high) < 0) and high[0] > 0.99 and high[-1] < 0.01  # where the signal drowns
    low = saved["signal_share"][:, (freq > 0) & (freq <= 0.1)].mean(axis=1)
    assert np.all(low[1:-1] > high[1:-1])  # first: at every intermediate t, high frequencies have less
    half = saved["half_signal_freq"]  # the frequency where signal share falls below 1/2 moves down
    assert np.all(np.diff(half) <= 0) and half[-1] < half[1]


def test_trajectory(tmp_path, checkpoint):
    cfg = vis_cfg(
        tmp_path, "figure=trajectory", f"ckpt={checkpoint}", "sampler=dpmpp2m", "steps=6", "show=4", "n=2"
    )
    result = visualize(cfg)
    check_png(result["png"])
    saved = np.load(result["data"])
    parts, spec, _ = load_checkpoint(checkpoint)
    kept = parse_respacing(parts.diffusion.num_timesteps, 6)
    assert saved["timesteps"].tolist() == kept[::-1]
    assert saved["shown"].tolist() == [0, 2, 3, 5]
    assert "DPMSolverPPSampler(steps=6" in str(saved["sampler"])
    # the same run, redone: states and predictions at the shown steps, and the samples
    from diffusion_lab.samplers import DPMSolverPPSampler

    gen = torch.Generator().manual_seed(0)
    noise = torch.randn((2, *spec["data_shape"]), generator=gen)
    x, traj = DPMSolverPPSampler(6).sample(
        parts.diffusion, parts.net, noise.shape, noise=noise, generator=gen, return_trajectory=True
    )
    inputs = [noise, *traj.xt[:-1]]
    for k, j in enumerate(saved["shown"]):
        assert np.allclose(saved["xt"][k], inputs[j].numpy(), atol=1e-6)
        assert np.allclose(saved["pred_x0"][k], traj.pred_x0[j].numpy(), atol=1e-6)
    assert np.allclose(saved["samples"], x.numpy(), atol=1e-6)
    assert np.array_equal(saved["xt"][0], noise.numpy())  # the first column is the starting noise
    assert saved["labels"].size == 0  # unconditional


@needs_fmnist
def test_vlb(tmp_path, checkpoint):
    result = visualize(vis_cfg(tmp_path, "figure=vlb", f"ckpt={checkpoint}", "n=3", "batch_size=2", "seed=4"))
    check_png(result["png"])
    with open(result["data"]) as f:
        rows = list(csv.DictReader(f))
    parts, spec, _ = load_checkpoint(checkpoint)
    T = parts.diffusion.num_timesteps
    assert [int(r["t"]) for r in rows] == list(range(1, T + 1))
    images = real_images(3)
    gen = torch.Generator().manual_seed(4)
    ref = [calc_bpd_loop(parts.diffusion, parts.net, chunk, generator=gen) for chunk in images.split(2)]
    vb = torch.cat([r["vb"] for r in ref]).double().mean(0).numpy()
    mse = torch.cat([r["mse"] for r in ref]).double().mean(0).numpy()
    assert np.allclose([float(r["vb_bits_per_dim"]) for r in rows], vb, rtol=1e-6)
    assert np.allclose([float(r["eps_mse"]) for r in rows], mse, rtol=1e-6)
    summary = json.loads(Path(result["summary"]).read_text())
    total = torch.cat([r["total_bpd"] for r in ref]).double().mean().item()
    assert summary["n"] == 3 and abs(summary["total_bpd"] - total) < 1e-5


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "overrides,match",
    [
        (["figure=nope"], r"figure='nope' is unknown; choose one of \['forward', 'schedules', 'spectrum'"),
        ([], "figure= is required"),
        (["figure=trajectory"], "figure=trajectory needs ckpt_path=PATH"),
        (["figure=vlb"], "figure=vlb needs ckpt_path=PATH"),
        (["figure=vlb", "ckpt=/no/such.ckpt"], "does not exist"),
        (["figure=forward", "t=[1000]"], r"t=\[1000\] out of range"),
        (["figure=forward", "n=0"], "n=0 is invalid"),
        (["figure=forward", "t=[1,abc]"], r"t='abc' is invalid: each timestep must be an integer \(0..T-1\)"),
        (["figure=forward", "show=0"], "show=0 is invalid: the number of columns shown must be >= 1"),
        (["figure=forward", "batch_size=0"], "batch_size=0 is invalid: it must be >= 1"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, overrides, match):
    cfg = vis_cfg(tmp_path, *overrides)
    with pytest.raises(ValueError, match=match):  # a UserError, or the CheckpointError of load_checkpoint
        visualize(cfg)
    with pytest.raises(SystemExit) as exit_info:
        friendly_errors(visualize)(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_cli(tmp_path):
    """The module entry point: a bare figure name, Hydra overrides, paths printed; bad input: one line, exit 2."""
    env = cli_env(tmp_path)
    cmd = [sys.executable, "-m", "diffusion_lab.visualize"]
    ok = subprocess.run(
        [*cmd, "schedules", "schedule.num_timesteps=20", f"out_dir={tmp_path / 'figs'}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"png     : {tmp_path / 'figs' / 'schedules.png'}" in ok.stdout
    assert f"data    : {tmp_path / 'figs' / 'schedules.csv'}" in ok.stdout
    check_png(tmp_path / "figs" / "schedules.png")
    assert sorted(FIGURES) == ["forward", "schedules", "spectrum", "trajectory", "vlb"]


def test_help_lists_every_figure_the_command_accepts(tmp_path):
    """The command line names the figures without importing them (a wrong name is refused before torch loads):
    the names must be the figures', and --help gives each one's summary."""
    assert tuple(FIGURES) == FIGURE_NAMES
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_lab.visualize", "--help"],
        capture_output=True,
        text=True,
        env=cli_env(tmp_path),
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name, what in FIGURE_SUMMARIES.items():
        assert re.search(rf"^  {name} +{re.escape(what)}$", proc.stdout, re.MULTILINE), (name, proc.stdout)


@needs_fmnist
def test_figures_go_to_tensorboard_and_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tb = visualize(
        vis_cfg(tmp_path / "tb", "figure=schedules", "schedule.num_timesteps=20", "log_to=tensorboard")
    )
    events = list(Path(tb["logged_to"]).glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 1000  # the image summary is in the event file
    wb = visualize(vis_cfg(tmp_path / "wb", "figure=schedules", "schedule.num_timesteps=20", "log_to=wandb"))
    media = list(Path(wb["logged_to"]).rglob("*.png"))
    assert media, "the offline W&B run holds the figure"
