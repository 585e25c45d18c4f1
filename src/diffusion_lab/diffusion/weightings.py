"""Loss weightings λ_t on the simple (MSE) loss, each a small object returning (B,) weights.

A weighting is defined where its paper defines it (ε-space or x_0-space) and converted to the space of the
network's target with the parameterization's ``eps_error_scale`` = |Δε|²/|Δtarget|², using
|Δε|² = SNR · |Δx_0|². So a weighting means the same thing whichever of ε, x_0, v the network predicts.

``processes`` names the processes a weighting applies to: the SNR-based ones read the Gaussian process's
schedule (ddpm); ``edm`` and ``inverse_sigma2`` are λ(σ) on the denoiser's data-space error in EDM's σ-space;
``uniform`` applies to every process.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .process import Diffusion

__all__ = [
    "Weighting",
    "UniformWeighting",
    "VLBWeighting",
    "SNRWeighting",
    "MinSNRWeighting",
    "P2Weighting",
    "EDMWeighting",
    "InverseSigmaSquaredWeighting",
    "WEIGHTINGS",
    "build_weighting",
]


class Weighting:
    name = "base"
    processes: tuple[str, ...] | None = ("ddpm",)  # None: any process

    def __call__(self, diffusion: Diffusion, t: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _eps_scale(diffusion: Diffusion, t: Tensor) -> Tensor:
    return diffusion.prediction.eps_error_scale(diffusion.schedule, t)


class UniformWeighting(Weighting):
    """λ_t = 1 on the target's MSE: Ho et al.'s L_simple for whatever the network predicts."""

    name = "uniform"
    processes = None

    def __call__(self, diffusion, t):
        return torch.ones(t.shape, device=t.device)


class VLBWeighting(Weighting):
    """Ho et al. eq. (12): λ_t = β_t² / (2 σ_t² α_t (1 - ᾱ_t)) on the ε-MSE — the true bound's weight.

    σ_t² is the reverse variance: β̃_t (``sigma="small"``, clipped at the first step) or β_t (``"large"``).
    """

    name = "vlb"

    def __init__(self, sigma: str = "small"):
        if sigma not in ("small", "large"):
            raise ValueError(f"weighting.sigma={sigma!r} is invalid; choose 'small' or 'large'")
        self.sigma = sigma

    def __call__(self, diffusion, t):
        s = diffusion.schedule
        var = s.at("posterior_variance_clipped" if self.sigma == "small" else "large_variance", t)
        beta, alpha = s.at("betas", t), s.at("alphas", t)
        w_eps = beta**2 / (2.0 * var * alpha * s.at("one_minus_alphas_cumprod", t))
        return w_eps * _eps_scale(diffusion, t)


class SNRWeighting(Weighting):
    """λ_t = SNR(t) on the x_0-MSE, i.e. the plain ε-MSE (Hang et al. 2023, Table 1's "SNR")."""

    name = "snr"

    def __call__(self, diffusion, t):
        return _eps_scale(diffusion, t)


class MinSNRWeighting(Weighting):
    """Hang et al. 2023: λ_t = min(SNR(t), γ) on the x_0-MSE.

    In the target's space: ε → min(SNR, γ)/SNR, x_0 → min(SNR, γ), v → min(SNR, γ)/(SNR + 1).
    """

    name = "min_snr"

    def __init__(self, gamma: float = 5.0):
        if gamma <= 0:
            raise ValueError(f"weighting.gamma={gamma!r} is invalid: min-SNR-γ needs γ > 0")
        self.gamma = gamma

    def __call__(self, diffusion, t):
        snr = diffusion.schedule.at("snr", t)
        return snr.clamp(max=self.gamma) / snr * _eps_scale(diffusion, t)


class P2Weighting(Weighting):
    """Choi et al. 2022: λ_t = 1 / (k + SNR(t))^γ on the ε-MSE (γ = 0 recovers L_simple)."""

    name = "p2"

    def __init__(self, k: float = 1.0, gamma: float = 1.0):
        if k <= 0 or gamma < 0:
            raise ValueError(f"weighting p2 needs k > 0 and gamma >= 0; got k={k!r}, gamma={gamma!r}")
        self.k = k
        self.gamma = gamma

    def __call__(self, diffusion, t):
        snr = diffusion.schedule.at("snr", t)
        return (self.k + snr).pow(-self.gamma) * _eps_scale(diffusion, t)


class EDMWeighting(Weighting):
    """Karras et al. 2022, Table 1: λ(σ) = (σ² + σ_data²) / (σ·σ_data)² on |D_θ − x_0|² (σ_data: the
    process's). It is 1 / c_out(σ)² of the EDM preconditioning, so the network's own target has unit weight."""

    name = "edm"
    processes = ("edm",)

    def __call__(self, process, t):
        sd = process.sigma_data
        return (t**2 + sd**2) / (t * sd) ** 2


class InverseSigmaSquaredWeighting(Weighting):
    """λ(σ) = 1 / σ² on |D_θ − x_0|²: the VP and VE rows of Karras et al.'s Table 1 (the ε-MSE of DDPM)."""

    name = "inverse_sigma2"
    processes = ("edm",)

    def __call__(self, process, t):
        return 1.0 / t**2


WEIGHTINGS: dict[str, type[Weighting]] = {
    "uniform": UniformWeighting,
    "vlb": VLBWeighting,
    "snr": SNRWeighting,
    "min_snr": MinSNRWeighting,
    "p2": P2Weighting,
    "edm": EDMWeighting,
    "inverse_sigma2": InverseSigmaSquaredWeighting,
}


def build_weighting(name: str, **kwargs) -> Weighting:
    if name not in WEIGHTINGS:
        raise ValueError(f"weighting={name!r} is unknown; choose one of {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[name](**kwargs)
