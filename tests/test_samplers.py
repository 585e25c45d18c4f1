"""Samplers driven by the exact denoiser of Gaussian data, whose output distribution is known in closed form,
and the samplers' mechanics: trajectories, determinism, network evaluations, DDIM(η=1) = DDPM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gaussian_oracle import GaussianDenoiser, posterior_stats, sampler_moments, tables, tables_from_abar

from diffusion_lab.diffusion import Diffusion, build_schedule, parse_respacing
from diffusion_lab.samplers import SAMPLERS, DDIMSampler, DDPMSampler, build_sampler

PREDS = ["eps", "x0", "v"]
MU, S = 0.3, 0.5  # data N(0.3, 0.5²): the samplers run with clip_denoised=False, the data is not in [-1, 1]
Z = 5.0  # standard errors: a correct implementation fails one check with probability ~6e-7
SHAPE = (12_500, 2, 2, 2)  # 100k iid values (the exact denoiser acts elementwise); 2 channels to split


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Elementwise work on ~1e5 values: a second intra-op thread gains little and loses much when the cores
    are shared (e.g. pytest-xdist or a busy CI runner)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def abar_of(schedule) -> np.ndarray:
    return tables(schedule.betas.numpy())["abar"]


def check_moments(x: torch.Tensor, mean: float, var: float) -> None:
    """The sample mean and variance against (mean, var) within Z standard errors estimated from the sample:
    SE(mean) = sqrt(var/n), SE(variance) = sqrt((m4 - var²)/n)."""
    v = x.double().flatten().numpy()
    n = v.size
    m_hat, v_hat = v.mean(), v.var(ddof=1)
    m4 = np.mean((v - m_hat) ** 4)
    assert abs(m_hat - mean) < Z * math.sqrt(v_hat / n), (m_hat, mean)
    assert abs(v_hat - var) < Z * math.sqrt((m4 - v_hat**2) / n), (v_hat, var)


# (id, schedule, T, variance, model's variance channels, sampler, kind for the oracle, eta,
#  bound on the discretization bias |E[var] - s²| / s² of this configuration, stated in the test)
CONFIGS = [
    # all T steps with beta~: the reverse variance lacks coef1² Var(x_0|x_t), -7% (linear) / -4% (cosine)
    ("ddpm-all-linear", "linear", 200, "fixed_small", None, lambda: DDPMSampler(None, False), "ddpm", 0, 0.08),
    ("ddpm-all-cosine", "cosine", 200, "fixed_small", None, lambda: DDPMSampler(None, False), "ddpm", 0, 0.05),
    # beta as the variance overshoots slightly (+1.5%)
    ("ddpm-all-large", "linear", 200, "fixed_large", None, lambda: DDPMSampler(None, False), "ddpm", 0, 0.03),
    # learned_range with zero channels: the geometric mean of beta and beta~
    ("ddpm-all-range0", "linear", 200, "learned_range", "zeros", lambda: DDPMSampler(None, False), "ddpm", 0, 0.05),
    # the exact reverse variance: only the missing noise of the last step, Var(x_0|x_1) (0.2%), remains
    ("ddpm-all-exact", "cosine", 200, "learned", "exact", lambda: DDPMSampler(None, False), "ddpm", 0, 0.005),
    # respaced to 50 steps: bigger steps, larger deficit of beta~ (-21% linear, -13% cosine)
    ("ddpm-ddim50", "linear", 200, "fixed_small", None, lambda: DDPMSampler("ddim50", False), "ddpm", 0, 0.25),
    ("ddpm-50", "cosine", 200, "fixed_small", None, lambda: DDPMSampler(50, False), "ddpm", 0, 0.15),
    # DDIM on 50 steps: η = 0 (deterministic, -10%/-6%), η = 1 (DDPM's variance on the respaced grid)
    ("ddim0-linear", "linear", 200, "fixed_small", None, lambda: DDIMSampler(50, 0.0, False), "ddim", 0.0, 0.12),
    ("ddim0-cosine", "cosine", 200, "fixed_small", None, lambda: DDIMSampler(50, 0.0, False), "ddim", 0.0, 0.08),
    ("ddim1-cosine", "cosine", 200, "fixed_small", None, lambda: DDIMSampler(50, 1.0, False), "ddim", 1.0, 0.15),
]


def oracle_reverse_variance(abar_kept: np.ndarray, variance: str, channels: str | None) -> np.ndarray:
    """σ² at each position of the (respaced) grid, from its own alpha-bars, by each variance's definition."""
    tk = tables_from_abar(abar_kept)
    if variance == "fixed_small":
        return tk["post_var_clipped"]
    if variance == "fixed_large":
        return np.r_[tk["post_var"][1], tk["betas"][1:]]
    if variance == "learned_range" and channels == "zeros":  # frac = 1/2: sqrt(beta~_clipped · beta)
        return np.sqrt(tk["post_var_clipped"] * tk["betas"])
    if variance == "learned" and channels == "exact":  # Var(x_{t-1} | x_t) = beta~ + coef1² Var(x_0 | x_t)
        _, _, _, v0 = posterior_stats(abar_kept, MU, S)
        return tk["post_var"] + tk["coef1"] ** 2 * v0
    raise AssertionError((variance, channels))


@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize(
    ("schedule", "T", "variance", "channels", "make_sampler", "kind", "eta", "bias"),
    [c[1:] for c in CONFIGS],
    ids=[c[0] for c in CONFIGS],
)
def test_exact_denoiser_recovers_gaussian_data(pred, schedule, T, variance, channels, make_sampler, kind, eta, bias):
    s = build_schedule(schedule, T)
    d = Diffusion(s, pred, variance)
    abar = abar_of(s)
    model = GaussianDenoiser(abar, MU, S, pred, channels)
    sampler = make_sampler()
    x = sampler.sample(d, model, SHAPE, generator=torch.Generator().manual_seed(0))
    assert x.shape == SHAPE and x.dtype == torch.float32
    assert model.calls == sampler.num_evaluations(d)

    # The exact output distribution of this sampler, by an independent linear-Gaussian recursion.
    kept = list(range(T)) if sampler.steps is None else parse_respacing(T, sampler.steps)
    reverse_var = oracle_reverse_variance(abar[kept], variance, channels) if kind == "ddpm" else None
    m, V = sampler_moments(abar[kept], MU, S, kind, eta, reverse_var)
    check_moments(x, m, V)

    # ... which is the data distribution up to the discretization bias stated for this configuration
    # (the mean is recovered to within 0.002 everywhere: the linear recursion's mean error is tiny).
    assert abs(m - MU) < 0.002
    assert abs(V - S * S) / (S * S) < bias
    # and so the samples themselves: within the bias plus 5 SE of the sample variance (0.0056 / 0.25 = 2.2%)
    assert abs(x.double().mean().item() - MU) < 0.002 + Z * math.sqrt(S * S / x.numel())
    assert abs(x.double().var().item() - S * S) / (S * S) < bias + Z * math.sqrt(2 / x.numel())
