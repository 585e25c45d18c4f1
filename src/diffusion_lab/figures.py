"""The figures of ``python -m diffusion_lab.visualize``, made by the library's own code: the forward process on
dataset images, the schedules, the power spectrum of x_t over t, a checkpoint's sampling trajectory and its
per-timestep VLB terms. Each writes its PNG and the plotted numbers beside it. The command line imports this
module (torch, the data, matplotlib's helpers) only once its options have been checked."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from .diffusion import SCHEDULES, NoiseSchedule, build_schedule, calc_bpd_loop, q_sample
from .diffusion.guidance import ClassifierFreeGuidance
from .errors import UserError
from .io import atomic_path

__all__ = [
    "FIGURES",
    "radial_power_spectrum",
    "default_timesteps",
    "figure_forward",
    "figure_schedules",
    "figure_spectrum",
    "figure_trajectory",
    "figure_vlb",
]


# --------------------------------------------------------------------------------------------- helpers
def default_timesteps(T: int, k: int = 8, spacing: str = "linear") -> list[int]:
    """``k`` timesteps from 0 to T-1, evenly spaced (``linear``) or denser at small t (``log``)."""
    if spacing == "log":
        values = np.geomspace(1, T, k) - 1
    else:
        values = np.linspace(0, T - 1, k)
    return sorted({int(round(v)) for v in values})


def _timesteps(cfg: DictConfig, T: int, default: list[int]) -> list[int]:
    if cfg.t is None:
        return default
    ts = [int(t) for t in (cfg.t if OmegaConf.is_list(cfg.t) else [cfg.t])]
    bad = [t for t in ts if not 0 <= t < T]
    if bad:
        raise UserError(f"t={bad} out of range: this schedule has t = 0..{T - 1}")
    return ts


def radial_power_spectrum(x: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of images (B, C, H, W), averaged over the batch and channels.

    Power is |FFT|² with the orthonormal FFT, so white noise of variance v has power v at every frequency.
    Bins are integer radii k = round(sqrt(k_x² + k_y²)) of the frequency index, 0 .. min(H, W) // 2 (the corners
    beyond are dropped). Returns (frequency in cycles/pixel = k / min(H, W), mean power per bin, pixels per bin).
    """
    x = x.double()
    H, W = x.shape[-2:]
    power = torch.fft.fft2(x, norm="ortho").abs().pow(2).mean(dim=tuple(range(x.ndim - 2)))  # (H, W)
    ky = torch.fft.fftfreq(H, d=1.0 / H, dtype=torch.float64)
    kx = torch.fft.fftfreq(W, d=1.0 / W, dtype=torch.float64)
    radius = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).round().long()
    n_bins = min(H, W) // 2 + 1
    keep = radius < n_bins
    counts = torch.bincount(radius[keep], minlength=n_bins).double()
    sums = torch.bincount(radius[keep], weights=power[keep], minlength=n_bins)
    freq = np.arange(n_bins) / min(H, W)
    return freq, (sums / counts).numpy(), counts.numpy()


def high_frequency_fraction(
    power: np.ndarray, counts: np.ndarray, freq: np.ndarray, cutoff: float = 0.25
) -> float:
    """Share of the (non-DC) power at frequencies above ``cutoff`` cycles/pixel (half the Nyquist rate)."""
    total = power * counts
    return float(total[freq > cutoff].sum() / total[freq > 0].sum())


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    _plt().close(fig)
    return path


def _save_npz(path: Path, **arrays: Any) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


def _save_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _show(ax, image: Tensor) -> None:
    """One (C, H, W) image in [-1, 1] on an axis, without ticks."""
    img = ((image.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def _image_grid(rows: list[list[Tensor]], col_titles: list[str], row_titles: list[str], title: str):
    plt = _plt()
    nr, nc = len(rows), len(rows[0])
    fig, axes = plt.subplots(nr, nc, figsize=(1.2 * nc + 0.8, 1.2 * nr + 0.6), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            _show(axes[r][c], image)
            if r == 0:
                axes[r][c].set_title(col_titles[c], fontsize=7)
        axes[r][0].set_ylabel(row_titles[r], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _images(cfg: DictConfig, n: int) -> Tensor:
    datamodule = instantiate(cfg.data)
    if not datamodule.is_image:
        raise UserError(f"figure={cfg.figure} needs image data; data={datamodule.name} is a 2-D point set")
    return datamodule.real_images(str(cfg.split), n)


def _process(cfg: DictConfig):
    """The checkpoint's process, else the one the ``process`` group names (with its schedule / degradation)."""
    from .build import load_checkpoint
    from .process_parts import build_process

    if cfg.ckpt_path:
        return load_checkpoint(cfg.ckpt_path)[0].diffusion
    groups = ("process", "schedule", "degradation")
    return build_process({k: OmegaConf.to_container(cfg[k], resolve=True) for k in groups if k in cfg})


def _schedule(cfg: DictConfig) -> NoiseSchedule:
    process = _process(cfg)
    if process.name != "ddpm":
        raise UserError(
            f"figure={cfg.figure} plots the Gaussian noise schedule; process={process.name} has none "
            "(figure=forward draws process=ddpm or cold)"
        )
    return process.schedule


# The processes figure=forward draws: those on discrete levels t = 0 .. T-1 (EDM's σ and a flow's t are continuous).
FORWARD_PROCESSES = ("ddpm", "cold")


# --------------------------------------------------------------------------------------------- figures
def figure_forward(cfg: DictConfig, out: Path) -> dict[str, Path]:
    """x_0 and x_t = process.corrupt(x_0, t, ε) at chosen t, one noise ε per image for every t: the Gaussian
    q(x_t | x_0), or cold diffusion's degradation D(x_0, t)."""
    process = _process(cfg)
    if process.name not in FORWARD_PROCESSES:
        raise UserError(
            f"figure=forward draws process={'|'.join(FORWARD_PROCESSES)} (discrete levels t); this checkpoint's is "
            f"process={process.name}"
        )
    T = process.num_timesteps
    ts = _timesteps(cfg, T, default_timesteps(T, 8)[1:])  # 7 evenly spaced after the x_0 column
    x0 = _images(cfg, int(cfg.n))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(int(cfg.seed)))
    xt = torch.stack([process.corrupt(x0, torch.full((x0.shape[0],), t), noise) for t in ts], dim=1)
    rows = [[x0[i], *xt[i]] for i in range(x0.shape[0])]
    arrays: dict[str, Any] = {}
    if process.name == "ddpm":
        abar = process.schedule.alphas_cumprod[ts].numpy()
        arrays["alphas_cumprod"] = abar
        cols = ["x_0"] + [f"t={t}\nᾱ={a:.3g}" for t, a in zip(ts, abar)]
        title = f"Forward process q(x_t | x_0), {process.schedule!r}"
    else:
        cols = ["x_0"] + [f"t={t}" for t in ts]
        title = f"Degradation D(x_0, t), {process.degradation!r}"
    fig = _image_grid(rows, cols, [f"#{i}" for i in range(x0.shape[0])], title)
    data = _save_npz(
        out.with_suffix(".npz"),
        x0=x0.numpy(),
        xt=xt.numpy(),
        timesteps=np.array(ts),
        seed=int(cfg.seed),
        split=str(cfg.split),
        process=repr(process),
        **arrays,
    )
    return {"png": _save_fig(fig, out.with_suffix(".png")), "data": data}


def figure_schedules(cfg: DictConfig, out: Path) -> dict[str, Path]:
    """ᾱ_t, SNR_t = ᾱ/(1-ᾱ) and log-SNR of every registered schedule at T = schedule.num_timesteps."""
    T = int(cfg.schedule.num_timesteps)
    schedules = {name: build_schedule(name, T) for name in SCHEDULES}
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    t = np.arange(T)
    for name, s in schedules.items():
        axes[0].plot(t, s.alphas_cumprod.numpy(), label=name)
        axes[1].plot(t, s.snr.numpy(), label=name)
        axes[2].plot(t, s.log_snr.numpy(), label=name)
    axes[0].set(xlabel="timestep t", ylabel="ᾱ_t", title="signal level ᾱ_t")
    axes[1].set(xlabel="timestep t", ylabel="SNR_t", title="SNR = ᾱ/(1-ᾱ)", yscale="log")
    axes[2].set(xlabel="timestep t", ylabel="log SNR_t", title="log-SNR")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Noise schedules, T = {T}", fontsize=10)
    fig.tight_layout()
    header = ["t"] + [f"{name}_{k}" for name in schedules for k in ("alphas_cumprod", "snr", "log_snr")]
    rows = [
        [i]
        + [float(getattr(s, k)[i]) for s in schedules.values() for k in ("alphas_cumprod", "snr", "log_snr")]
        for i in range(T)
    ]
    data = _save_csv(out.with_suffix(".csv"), header, rows)
    return {"png": _save_fig(fig, out.with_suffix(".png")), "data": data}


def figure_spectrum(cfg: DictConfig, out: Path) -> dict[str, Path]:
    """Radially averaged power spectrum of x_t over t, and the share of it that is signal per frequency.

    Natural images have most power at low frequencies while the noise is white, so as ᾱ_t falls the high
    frequencies are drowned first: the expected signal share ᾱ P_0(f) / (ᾱ P_0(f) + 1 - ᾱ) drops below 1/2 at
    ever lower frequencies.
    """
    schedule = _schedule(cfg)
    T = schedule.num_timesteps
    ts = _timesteps(cfg, T, default_timesteps(T, 8, "log"))
    x0 = _images(cfg, int(cfg.n))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(int(cfg.seed)))
    freq, p0, counts = radial_power_spectrum(x0)
    power, share, hf = [], [], []
    for t in ts:
        xt = q_sample(schedule, x0, torch.full((x0.shape[0],), t), noise)
        _, p, _ = radial_power_spectrum(xt)
        power.append(p)
        hf.append(high_frequency_fraction(p, counts, freq))
        abar = float(schedule.alphas_cumprod[t])
        share.append(abar * p0 / (abar * p0 + 1.0 - abar))
    power, share = np.stack(power), np.stack(share)
    # the lowest frequency whose expected signal share is below 1/2 (Nyquist + one bin when none is)
    half = np.array([freq[np.argmax(s < 0.5)] if (s < 0.5).any() else freq[-1] + freq[1] for s in share])

    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    colors = plt.cm.viridis(np.linspace(0, 1, len(ts)))
    for k, t in enumerate(ts):
        axes[0].plot(freq[1:], power[k, 1:], color=colors[k], label=f"t={t}")
        axes[1].plot(freq[1:], share[k, 1:], color=colors[k], label=f"t={t}")
    axes[0].plot(freq[1:], p0[1:], "k--", label="x_0")
    axes[0].set(xlabel="spatial frequency (cycles/pixel)", ylabel="power", title="power spectrum of x_t")
    axes[0].set_yscale("log")
    axes[1].axhline(0.5, color="gray", lw=0.8)
    axes[1].set(
        xlabel="spatial frequency (cycles/pixel)", ylabel="signal share", title="expected signal share"
    )
    axes[2].plot(ts, hf, "o-", label="high-frequency power share of x_t")
    axes[2].plot(ts, share[:, freq > 0.25].mean(axis=1), "s-", label="signal share above 0.25 c/px")
    axes[2].set(xlabel="timestep t", title="high frequencies (> 0.25 cycles/pixel)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Fourier view of the forward process, {schedule!r}, n={x0.shape[0]}", fontsize=9)
    fig.tight_layout()
    data = _save_npz(
        out.with_suffix(".npz"),
        freq=freq,
        counts=counts,
        timesteps=np.array(ts),
        alphas_cumprod=schedule.alphas_cumprod[ts].numpy(),
        power_x0=p0,
        power=power,
        signal_share=share,
        high_freq_fraction=np.array(hf),
        half_signal_freq=half,
        seed=int(cfg.seed),
    )
    return {"png": _save_fig(fig, out.with_suffix(".png")), "data": data}


def figure_trajectory(cfg: DictConfig, out: Path) -> dict[str, Path]:
    """x_t and the network's x̂_0 at chosen steps of one sampling run (the sampler's ``return_trajectory``)."""
    from .build import load_checkpoint
    from .sampling import resolve_device, sampler_from_config

    device = resolve_device(str(cfg.device))
    parts, spec, _ = load_checkpoint(cfg.ckpt_path)
    shape = tuple(spec["data_shape"])
    if len(shape) != 3:
        raise UserError("figure=trajectory needs an image checkpoint; this one models 2-D points")
    net = parts.net.to(device)
    sampler = sampler_from_config(cfg.sampler, spec["sampler"], cfg.steps, process=parts.diffusion)
    n = int(cfg.n)
    num_classes = spec.get("num_classes")
    model: Callable = net
    labels = None
    if num_classes:
        labels = torch.arange(n) % num_classes
        mean_channels = shape[0] if parts.diffusion.out_channel_factor > 1 else None
        model = ClassifierFreeGuidance(
            net, labels.to(device), float(cfg.guidance), num_classes, mean_channels
        )
    elif cfg.guidance:
        raise UserError("guidance= needs a class-conditional checkpoint (trained with conditional=true)")
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
    noise = torch.randn((n, *shape), device=device, generator=gen)
    x, traj = sampler.sample(
        parts.diffusion, model, noise.shape, device, noise=noise, generator=gen, return_trajectory=True
    )
    # step i evaluates the network at (x_{t_i}, t_i): its input is the previous step's output (the start first)
    inputs = [traj.start, *traj.xt[:-1]]
    k = len(traj.timesteps)
    shown = sorted({int(round(v)) for v in np.linspace(0, k - 1, min(int(cfg.show), k))})
    rows, row_titles = [], []
    for i in range(n):
        rows.append([inputs[j][i] for j in shown] + [x[i].cpu()])
        rows.append([traj.pred_x0[j][i] for j in shown] + [x[i].cpu()])
        tag = f"#{i}" + (f" y={int(labels[i])}" if labels is not None else "")
        row_titles += [f"{tag} x_t", f"{tag} x̂_0"]
    # the level each shown step starts from: DDPM's index, EDM's σ, a flow's t
    level = [traj.timesteps[j] for j in shown]
    cols = [f"t={v:.3g}" if isinstance(v, float) else f"t={v}" for v in level] + ["sample"]
    title = f"Reverse trajectory, {sampler!r} ({sampler.num_evaluations(parts.diffusion)} evaluations)"
    fig = _image_grid(rows, cols, row_titles, title)
    data = _save_npz(
        out.with_suffix(".npz"),
        timesteps=np.array(traj.timesteps),
        shown=np.array(shown),
        xt=torch.stack([inputs[j] for j in shown]).numpy(),
        pred_x0=torch.stack([traj.pred_x0[j] for j in shown]).numpy(),
        samples=x.cpu().numpy(),
        labels=labels.numpy() if labels is not None else np.zeros(0, dtype=np.int64),
        seed=int(cfg.seed),
        sampler=repr(sampler),
    )
    return {"png": _save_fig(fig, out.with_suffix(".png")), "data": data}


def figure_vlb(cfg: DictConfig, out: Path) -> dict[str, Path]:
    """The per-timestep terms L_{t-1} of the variational bound (bits/dim, ``calc_bpd_loop``) over the first ``n``
    images of ``split``; ``clip_denoised`` as evaluate's ``bpd_clip_denoised`` (the same images, seed and setting
    give the same total as ``evaluate``'s bits/dim)."""
    vb, mse, x0_mse, total, prior = _vlb_terms(cfg)
    T = vb.shape[1]
    t = np.arange(1, T + 1)  # the paper's t: term L_{t-1} at index t - 1
    fig = _plot_vlb(t, vb, mse, x0_mse, float(total.mean()), float(prior.mean()))
    fig.suptitle(f"{Path(cfg.ckpt_path).name}: n={vb.shape[0]} {cfg.split} images", fontsize=9)
    fig.tight_layout()
    rows = [
        [int(t[i]), float(vb[:, i].mean()), float(mse[:, i].mean()), float(x0_mse[:, i].mean())]
        for i in range(T)
    ]
    data = _save_csv(out.with_suffix(".csv"), ["t", "vb_bits_per_dim", "eps_mse", "x0_mse"], rows)
    summary = {
        "total_bpd": float(total.mean()),
        "total_bpd_stderr": float(total.std() / math.sqrt(len(total))) if len(total) > 1 else float("nan"),
        "prior_bpd": float(prior.mean()),
        "n": int(vb.shape[0]),
        "split": str(cfg.split),
        "seed": int(cfg.seed),
        "clip_denoised": bool(cfg.clip_denoised),
    }
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return {"png": _save_fig(fig, out.with_suffix(".png")), "data": data, "summary": out.with_suffix(".json")}


def _vlb_terms(cfg: DictConfig) -> tuple[torch.Tensor, ...]:
    """Per-image terms of the bound over ``cfg``'s images: (vb (N, T), ε MSE (N, T), x_0 MSE (N, T), total (N,),
    prior (N,)), in float64 on the CPU."""
    from .build import load_checkpoint
    from .evaluation import build_datamodule
    from .sampling import resolve_device

    device = resolve_device(str(cfg.device))
    parts, spec, _ = load_checkpoint(cfg.ckpt_path)
    if not parts.diffusion.has_likelihood:
        raise UserError(
            f"figure=vlb needs a likelihood, which this checkpoint's process={parts.diffusion.name} has not"
        )
    images = build_datamodule(spec, cfg.data_root).real_images(str(cfg.split), int(cfg.n))
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
    net = parts.net.to(device)
    results = [
        calc_bpd_loop(
            parts.diffusion,
            net,
            chunk.to(device),
            progress=bool(cfg.progress),
            generator=gen,
            clip_denoised=bool(cfg.clip_denoised),
        )
        for chunk in images.split(int(cfg.batch_size))
    ]
    return tuple(
        torch.cat([r[key].cpu().double() for r in results])
        for key in ("vb", "mse", "x0_mse", "total_bpd", "prior_bpd")
    )


def _plot_vlb(
    t: np.ndarray, vb: torch.Tensor, mse: torch.Tensor, x0_mse: torch.Tensor, total: float, prior: float
):
    """The mean terms per timestep (log scale) beside the two prediction errors; ``total`` and ``prior`` in
    bits/dim."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(t, vb.mean(0).numpy(), label="L_{t-1}")
    axes[0].axhline(prior, color="gray", ls="--", label=f"prior L_T = {prior:.3g}")
    axes[0].set(xlabel="timestep t", ylabel="bits/dim", title=f"VLB terms (total {total:.3f} bpd)")
    axes[0].set_yscale("log")
    axes[1].plot(t, mse.mean(0).numpy(), label="ε MSE")
    axes[1].plot(t, x0_mse.mean(0).numpy(), label="x_0 MSE")
    axes[1].set(xlabel="timestep t", ylabel="MSE", title="prediction errors", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


FIGURES: dict[str, Callable[[DictConfig, Path], dict[str, Path]]] = {
    "forward": figure_forward,
    "schedules": figure_schedules,
    "spectrum": figure_spectrum,
    "trajectory": figure_trajectory,
    "vlb": figure_vlb,
}
