"""EDM (Karras et al. 2022): diffusion in σ-space, x = x_0 + σ·n, and the preconditioned denoiser (eq. 7)

    D_θ(x; σ) = c_skip(σ)·x + c_out(σ)·F_θ(c_in(σ)·x; c_noise(σ))

where the network F_θ knows nothing of σ but the number c_noise it is handed. Table 1's three preconditionings:

              c_skip               c_out                    c_in                 c_noise
    VP        1                    −σ                       1 / sqrt(σ² + 1)     (M − 1)·σ⁻¹(σ)
    VE        1                    σ                        1                    ln(σ / 2)
    EDM       σ_d² / (σ² + σ_d²)   σ·σ_d / sqrt(σ² + σ_d²)  1 / sqrt(σ² + σ_d²)  ¼·ln σ

VP's noise level at time t ∈ [0, 1] is σ(t) = sqrt(exp(½β_d t² + β_min t) − 1) (β_d = 19.9, β_min = 0.1,
M = 1000). With it F_θ is a DDPM ε-network: c_in·x = x / sqrt(1 + σ²) = sqrt(ᾱ)·x is DDPM's x_t, c_noise is the
timestep index (999·t) and D = x − σ·ε̂ (§2: the VP models are exactly DDPM's).

The process owns only σ_data and the preconditioning: training noise levels are a ``timesteps`` option
(timesteps.py), the weighting λ(σ) a ``weighting`` (weightings.py), the σ grid of sampling the sampler's
(samplers/edm.py). ``t`` everywhere here is σ itself, a (B,) float tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .process_base import Process

__all__ = [
    "EDMProcess",
    "Preconditioning",
    "EDMPreconditioning",
    "VPPreconditioning",
    "VEPreconditioning",
    "PRECONDITIONINGS",
    "vp_sigma",
    "vp_sigma_inv",
]

# The validation draw and the loss-by-decile logs use the EDM training distribution (Table 1: P_mean = −1.2,
# P_std = 1.2) as a fixed reference, whatever the run trains on, so runs with other distributions compare.
REFERENCE_P_MEAN, REFERENCE_P_STD = -1.2, 1.2


def vp_sigma(t: Tensor, beta_d: float = 19.9, beta_min: float = 0.1) -> Tensor:
    """VP's σ(t) = sqrt(exp(½β_d t² + β_min t) − 1) (Table 1)."""
    return torch.expm1(0.5 * beta_d * t**2 + beta_min * t).sqrt()


def vp_sigma_inv(sigma: Tensor, beta_d: float = 19.9, beta_min: float = 0.1) -> Tensor:
    """σ⁻¹(σ) = (sqrt(β_min² + 2β_d·ln(1 + σ²)) − β_min) / β_d, the time at which VP reaches σ."""
    return ((beta_min**2 + 2 * beta_d * torch.log1p(sigma**2)).sqrt() - beta_min) / beta_d


class Preconditioning:
    """``scalings(σ) -> (c_skip, c_out, c_in, c_noise)``, each shaped like σ."""

    name = "base"

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class EDMPreconditioning(Preconditioning):
    """Karras et al.'s own: unit-variance network input and target for data of standard deviation σ_data."""

    name = "edm"

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = sigma_data

    def scalings(self, sigma):
        sd2 = self.sigma_data**2
        norm = (sigma**2 + sd2).sqrt()
        return sd2 / (sigma**2 + sd2), sigma * self.sigma_data / norm, 1.0 / norm, 0.25 * sigma.log()


class VPPreconditioning(Preconditioning):
    """Song et al.'s VP SDE, i.e. DDPM's ε-prediction on the linear schedule in the continuous limit."""

    name = "vp"

    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000):
        self.beta_d, self.beta_min, self.M = beta_d, beta_min, M

    def scalings(self, sigma):
        c_noise = (self.M - 1) * vp_sigma_inv(sigma, self.beta_d, self.beta_min)
        return torch.ones_like(sigma), -sigma, 1.0 / (sigma**2 + 1).sqrt(), c_noise


class VEPreconditioning(Preconditioning):
    """Song et al.'s VE SDE (NCSN++): the network predicts the scaled noise, D = x + σ·F."""

    name = "ve"

    def scalings(self, sigma):
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()


PRECONDITIONINGS: dict[str, Callable[[float], Preconditioning]] = {
    "edm": EDMPreconditioning,
    "vp": lambda sigma_data: VPPreconditioning(),
    "ve": lambda sigma_data: VEPreconditioning(),
}


def _per_sample(v: Tensor, ndim: int) -> Tensor:
    return v.reshape(-1, *([1] * (ndim - 1)))  # (B,) -> (B, 1, ...)


class EDMProcess(Process):
    """x = x_0 + σ·n with the preconditioned denoiser D_θ(x; σ); ``precond`` one of ``edm``, ``vp``, ``ve``."""

    name = "edm"

    def __init__(self, precond: str = "edm", sigma_data: float = 0.5):
        if precond not in PRECONDITIONINGS:
            raise ValueError(
                f"process.precond={precond!r} is unknown; choose one of {sorted(PRECONDITIONINGS)}"
            )
        if not sigma_data > 0:
            raise ValueError(f"process.sigma_data={sigma_data!r} must be > 0 (the data's standard deviation)")
        self.sigma_data = float(sigma_data)
        self.precond = PRECONDITIONINGS[precond](self.sigma_data)

    def corrupt(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        return x0 + _per_sample(t, x0.ndim) * noise

    def net_input(self, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        _, _, c_in, c_noise = self.precond.scalings(t)
        return _per_sample(c_in, xt.ndim) * xt, c_noise

    def denoise(self, out: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """D(x; σ) from the network's raw output F at (c_in·x, c_noise)."""
        c_skip, c_out, _, _ = self.precond.scalings(t)
        return _per_sample(c_skip, xt.ndim) * xt + _per_sample(c_out, xt.ndim) * out

    def denoised(self, model: Callable[[Tensor, Tensor], Tensor], xt: Tensor, t: Tensor) -> Tensor:
        """D_θ(x; σ) with ``model(x, c_noise)`` the raw network (or a guided one): one evaluation."""
        return self.denoise(model(*self.net_input(xt, t)), xt, t)

    def draw_validation_t(self, n, device, generator=None):
        z = torch.randn(n, device=device, generator=generator)
        return (REFERENCE_P_MEAN + REFERENCE_P_STD * z).exp()

    def bucket(self, t: Tensor, num_buckets: int) -> Tensor:
        """Deciles of the reference log-normal: each bin holds a tenth of its draws."""
        z = (t.log() - REFERENCE_P_MEAN) / (REFERENCE_P_STD * math.sqrt(2.0))
        quantile = 0.5 * (1.0 + torch.erf(z))
        return (quantile * num_buckets).long().clamp(0, num_buckets - 1)

    def __repr__(self) -> str:
        return f"EDMProcess({self.precond!r}, sigma_data={self.sigma_data})"
