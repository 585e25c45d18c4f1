"""Karras et al. 2022: the σ grid (eq. 5) and the samplers of Algorithms 1 and 2 on EDM's denoiser D(x; σ).

The grid, N steps from σ_max to σ_min and then to 0:

    σ_i = (σ_max^(1/ρ) + i/(N − 1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ   (i = 0 .. N − 1),   σ_N = 0

Algorithm 2, from x_0 = σ_0·n with n ~ N(0, I), for i = 0 .. N − 1 (Algorithm 1 is S_churn = 0):

    γ_i = min(S_churn / N, √2 − 1) if S_tmin ≤ σ_i ≤ S_tmax else 0
    σ̂ = σ_i + γ_i·σ_i,   x̂ = x_i + sqrt(σ̂² − σ_i²)·S_noise·z                   (z ~ N(0, I))
    d = (x̂ − D(x̂; σ̂)) / σ̂,   x_{i+1} = x̂ + (σ_{i+1} − σ̂)·d                     (Euler)
    if σ_{i+1} ≠ 0:  d' = (x_{i+1} − D(x_{i+1}; σ_{i+1})) / σ_{i+1}
                     x_{i+1} = x̂ + (σ_{i+1} − σ̂)·(d + d') / 2                       (Heun's correction)

so N steps cost 2N − 1 network evaluations (N without the correction: ``EDMEulerSampler``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .base import GridSampler, OnStep

__all__ = [
    "karras_sigmas",
    "edm_sample",
    "EDMEulerSampler",
    "EDMHeunSampler",
    "EDMStochasticSampler",
]

Denoise = Callable[[Tensor, float], Tensor]  # D(x; σ) for one σ shared by the batch


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """The N + 1 noise levels of eq. 5, the last 0, in float64."""
    i = torch.arange(steps, dtype=torch.float64)
    ramp = i / max(steps - 1, 1)
    inv_rho = 1.0 / rho
    sigmas = (sigma_max**inv_rho + ramp * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def edm_sample(
    denoise: Denoise,
    x: Tensor,
    sigmas: Tensor,
    second_order: bool = True,
    churn: float = 0.0,
    tmin: float = 0.0,
    tmax: float = math.inf,
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
) -> Tensor:
    """Algorithm 2 (Algorithm 1 with ``churn = 0``; Euler with ``second_order=False``) from ``x`` at σ_0 along
    ``sigmas`` (decreasing, the last 0). ``on_step(i, σ_i, x_{i+1}, D(x̂; σ̂))`` sees every step."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = min(churn / n, math.sqrt(2.0) - 1.0) if tmin <= sigma <= tmax else 0.0
        sigma_hat = sigma + gamma * sigma
        if gamma > 0:
            z = torch.randn(x.shape, device=x.device, generator=generator)
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * z
        denoised = denoise(x, sigma_hat)
        d = (x - denoised) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        if second_order and sigma_next > 0:
            d_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_next)
        x = x_next
        if on_step is not None:
            on_step(i, sigma, x, denoised)
    return x


class EDMHeunSampler(GridSampler):
    """Algorithm 1: deterministic Heun on the Karras σ grid; 2·steps − 1 network evaluations."""

    name = "edm_heun"
    processes = ("edm",)
    stochastic = False
    second_order = True

    def __init__(self, steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"sampler.steps={steps!r} is invalid: give a number of σ steps >= 1")
        if not 0 < sigma_min < sigma_max or not rho > 0:
            raise ValueError(
                f"sampler: need 0 < sigma_min < sigma_max and rho > 0, got {sigma_min!r}, {sigma_max!r}, {rho!r}"
            )
        self.steps, self.sigma_min, self.sigma_max, self.rho = steps, sigma_min, sigma_max, rho

    def sigmas(self) -> Tensor:
        return karras_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)

    def churn_settings(self) -> dict[str, float]:
        return {}

    def start(self, process, noise: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x at σ_0: ``noise`` ~ N(0, I) scaled by the grid's largest σ."""
        return noise * float(self.sigmas()[0])

    def walk(self, process, model, x: Tensor, generator: torch.Generator | None, on_step: OnStep) -> Tensor:
        def denoise(x: Tensor, sigma: float) -> Tensor:
            return process.denoised(model, x, torch.full((x.shape[0],), sigma, device=x.device))

        churn = self.churn_settings()
        return edm_sample(
            denoise, x, self.sigmas(), self.second_order, generator=generator, on_step=on_step, **churn
        )


class EDMEulerSampler(EDMHeunSampler):
    """Algorithm 1 without Heun's correction: first order, one evaluation per step."""

    name = "edm_euler"
    second_order = False


class EDMStochasticSampler(EDMHeunSampler):
    """Algorithm 2: Heun with fresh noise added at every step whose σ_i lies in [S_tmin, S_tmax] (γ_i from
    S_churn), scaled by S_noise; 2·steps − 1 network evaluations."""

    name = "edm_stochastic"
    stochastic = True

    def __init__(
        self,
        steps: int = 32,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        S_churn: float = 40.0,
        S_tmin: float = 0.05,
        S_tmax: float = 50.0,
        S_noise: float = 1.003,
    ):
        super().__init__(steps, sigma_min, sigma_max, rho)
        if S_churn < 0 or S_noise <= 0 or S_tmin > S_tmax:
            raise ValueError(
                f"sampler: need S_churn >= 0, S_noise > 0 and S_tmin <= S_tmax, got {S_churn!r}, {S_noise!r}, "
                f"{S_tmin!r}, {S_tmax!r}"
            )
        self.S_churn, self.S_tmin, self.S_tmax, self.S_noise = S_churn, S_tmin, S_tmax, S_noise

    def churn_settings(self) -> dict[str, float]:
        return {"churn": self.S_churn, "tmin": self.S_tmin, "tmax": self.S_tmax, "s_noise": self.S_noise}
