"""The forward (noising) process and the Gaussian identities the bound is made of.

Everything here takes the schedule as an argument; nothing owns one. Shapes: ``x`` is (B, ...) and ``t``
is (B,) integer timesteps in ``0 .. T-1``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .schedules import NoiseSchedule

__all__ = [
    "q_mean_variance",
    "q_sample",
    "q_step_sample",
    "q_posterior",
    "normal_kl",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "prior_bpd",
    "mean_flat",
    "NATS_PER_BIT",
]

NATS_PER_BIT = math.log(2.0)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch: (B, ...) -> (B,)."""
    return x.flatten(1).mean(dim=1)


def q_mean_variance(schedule: NoiseSchedule, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I): returns (mean, variance, log_variance)."""
    mean = schedule.at("sqrt_alphas_cumprod", t, x0.ndim) * x0
    # From the sqrt(1 - abar) table (1 - abar taken in float64): 1 - float32(abar) would lose the relative
    # precision of a small 1 - abar (e.g. 6e-4 relative at abar = 1 - 1e-4).
    var = schedule.at("sqrt_one_minus_alphas_cumprod", t, x0.ndim) ** 2
    return mean, var.expand_as(x0), var.log().expand_as(x0)


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
    """Draw x_t ~ q(x_t | x_0) in closed form."""
    noise = torch.randn_like(x0) if noise is None else noise
    return (
        schedule.at("sqrt_alphas_cumprod", t, x0.ndim) * x0
        + schedule.at("sqrt_one_minus_alphas_cumprod", t, x0.ndim) * noise
    )


def q_step_sample(schedule: NoiseSchedule, x_prev: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
    """One forward step: x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)."""
    noise = torch.randn_like(x_prev) if noise is None else noise
    alpha, beta = schedule.at("alphas", t, x_prev.ndim), schedule.at("betas", t, x_prev.ndim)
    return alpha.sqrt() * x_prev + beta.sqrt() * noise


def q_posterior(schedule: NoiseSchedule, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q(x_{t-1} | x_t, x_0): returns (mean, variance beta~_t, clipped log variance)."""
    mean = (
        schedule.at("posterior_mean_coef1", t, xt.ndim) * x0
        + schedule.at("posterior_mean_coef2", t, xt.ndim) * xt
    )
    var = schedule.at("posterior_variance", t, xt.ndim).expand_as(xt)
    log_var = schedule.at("posterior_log_variance_clipped", t, xt.ndim).expand_as(xt)
    return mean, var, log_var


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    # (logvar2 - logvar1) first: with equal variances it is exactly 0 and cancels -1 + exp(0) exactly, where
    # (-1 + logvar2) - logvar1 would leave a float32 rounding residue of up to ~1e-7 nats per element.
    return 0.5 * (
        -1.0 + (logvar2 - logvar1) + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Φ(x) via the tanh approximation used by Ho et al. (kept for bit-exact comparability of bpd)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(
    x: Tensor, mean: Tensor, log_scale: Tensor, bins: int = 256
) -> Tensor:
    """log P(x) of data on ``bins`` levels in [-1, 1] under N(mean, e^(2 log_scale)) integrated over each bin.

    The outermost bins extend to ±infinity, so the probabilities of all bins sum to one. In nats, elementwise.
    """
    half_bin = 1.0 / (bins - 1)
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + half_bin))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - half_bin))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    cdf_delta = cdf_plus - cdf_min
    edge = 1.0 - half_bin  # the last bin centres sit at ±1; anything beyond ±(1 - half a bin) is an edge bin
    return torch.where(
        x < -edge,
        log_cdf_plus,
        torch.where(x > edge, log_one_minus_cdf_min, cdf_delta.clamp(min=1e-12).log()),
    )


def prior_bpd(schedule: NoiseSchedule, x0: Tensor) -> Tensor:
    """KL(q(x_T | x_0) || N(0, I)) in bits per dimension, (B,). Not trainable; reported with the bound."""
    t = torch.full((x0.shape[0],), schedule.num_timesteps - 1, device=x0.device, dtype=torch.long)
    mean, _, log_var = q_mean_variance(schedule, x0, t)
    kl = normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(log_var))
    return mean_flat(kl) / NATS_PER_BIT
