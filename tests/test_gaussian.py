"""The forward process and the Gaussian identities: statistical tests of q, an independent Bayes derivation of
the posterior, the KL and the discretized decoder likelihood against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from diffusion_lab.diffusion import (
    CosineSchedule,
    LinearSchedule,
    NoiseSchedule,
    build_schedule,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
    prior_bpd,
    q_mean_variance,
    q_posterior,
    q_sample,
    q_step_sample,
)

# 5 standard errors: a correct implementation fails one such check with probability ~6e-7.
Z = 5.0


def moment_check(samples: np.ndarray, mean: np.ndarray, var: np.ndarray) -> None:
    """Per-column sample mean and variance against the expected ones, within Z standard errors.

    SE(mean) = sqrt(var / n); SE(sample variance) = sqrt((m4 - var^2) / n) = var sqrt(2 / n) for a Gaussian.
    """
    n = samples.shape[0]
    m_hat = samples.mean(0)
    v_hat = samples.var(0, ddof=1)
    assert np.all(np.abs(m_hat - mean) < Z * np.sqrt(var / n)), (m_hat, mean)
    assert np.all(np.abs(v_hat - var) < Z * var * np.sqrt(2.0 / n)), (v_hat, var)


# --------------------------------------------------------------------------------------------- forward process
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_composed_single_steps_match_closed_form(name):
    """x_t drawn by t applications of q(x_s | x_{s-1}) has the moments of q(x_t | x_0)."""
    T = 40
    s = build_schedule(name, T)
    g = torch.Generator().manual_seed(0)
    n = 40_000
    x0 = torch.linspace(-1.0, 1.0, 5).repeat(n, 1)  # five fixed data values, n chains each
    x = x0.clone()
    checkpoints = {0, 9, 24, 39}
    for t in range(T):
        tt = torch.full((n,), t, dtype=torch.long)
        x = q_step_sample(s, x, tt, noise=torch.randn(x.shape, generator=g))
        if t in checkpoints:
            mean, var, log_var = q_mean_variance(s, x0, tt)
            assert torch.allclose(log_var, var.log())
            # independent expectation: abar from a float64 product of (1 - beta)
            abar = float(np.prod(1.0 - s.betas.numpy()[: t + 1]))
            np.testing.assert_allclose(mean[0].numpy(), math.sqrt(abar) * x0[0].numpy(), rtol=1e-6)
            np.testing.assert_allclose(var[0].numpy(), 1.0 - abar, rtol=1e-6)
            moment_check(x.double().numpy(), mean[0].double().numpy(), var[0].double().numpy())


def test_q_sample_moments_and_noise_argument():
    s = CosineSchedule(1000)
    g = torch.Generator().manual_seed(1)
    n = 100_000
    x0 = torch.tensor([-0.8, 0.0, 0.3, 1.0]).repeat(n, 1)
    for t in (0, 100, 500, 999):
        tt = torch.full((n,), t, dtype=torch.long)
        xt = q_sample(s, x0, tt, noise=torch.randn(x0.shape, generator=g))
        abar = float(np.prod(1.0 - s.betas.numpy()[: t + 1]))
        moment_check(xt.double().numpy(), math.sqrt(abar) * x0[0].double().numpy(), np.full(4, 1.0 - abar))
    # the given noise is used as such: x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps
    eps = torch.randn(3, 2, 4, 4, generator=g)
    x0 = torch.rand(3, 2, 4, 4, generator=g) * 2 - 1
    t = torch.tensor([0, 7, 999])
    abar = torch.from_numpy(np.cumprod(1.0 - s.betas.numpy())[[0, 7, 999]]).view(3, 1, 1, 1)
    expected = abar.sqrt() * x0.double() + (1 - abar).sqrt() * eps.double()
    torch.testing.assert_close(q_sample(s, x0, t, eps).double(), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------- posterior
@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid", "quadratic"])
def test_posterior_is_the_product_of_gaussians(name):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0).

    As a function of x_{t-1}, q(x_t | x_{t-1}) = N(x_t; sqrt(α) x_{t-1}, β) is a Gaussian with precision α/β and
    mean x_t/sqrt(α); the prior q(x_{t-1} | x_0) = N(sqrt(abar_prev) x_0, 1 - abar_prev). The posterior has the
    sum of the precisions and the precision-weighted mean.
    """
    T = 100
    s = build_schedule(name, T)
    betas = s.betas.numpy()
    abar = np.cumprod(1.0 - betas)
    rng = np.random.default_rng(0)
    t = np.arange(1, T)  # index 0 separately below (prior variance 0)
    x0 = rng.uniform(-1, 1, size=t.shape)
    xt = rng.normal(size=t.shape)
    alpha, beta, ap = 1.0 - betas[t], betas[t], abar[t - 1]
    prec = alpha / beta + 1.0 / (1.0 - ap)
    var = 1.0 / prec
    mean = var * (np.sqrt(alpha) / beta * xt + np.sqrt(ap) / (1.0 - ap) * x0)

    tt = torch.from_numpy(t)
    m, v, lv = q_posterior(s, torch.from_numpy(x0), torch.from_numpy(xt), tt)
    np.testing.assert_allclose(m.numpy(), mean, rtol=2e-6, atol=2e-6)  # float32 tables
    np.testing.assert_allclose(v.numpy(), var, rtol=2e-6)
    np.testing.assert_allclose(lv.numpy(), np.log(var), rtol=1e-6, atol=1e-6)

    # index 0 (paper step 1): q(x_0 | x_1, x_0) is the point mass at x_0
    m0, v0, lv0 = q_posterior(s, torch.tensor([0.25]), torch.tensor([-0.7]), torch.tensor([0]))
    assert m0.item() == pytest.approx(0.25, abs=1e-6)
    assert v0.item() == 0.0
    assert lv0.item() == pytest.approx(math.log(var[0]), rel=1e-6)  # clipped to beta~ of index 1


def test_posterior_statistically():
    """Sampling x_{t-1} ~ q(x_{t-1}|x_0), then x_t ~ q(x_t|x_{t-1}), and regressing x_{t-1} on x_t recovers the
    posterior: E[x_{t-1} | x_t] = coef1 x_0 + coef2 x_t and the residual variance beta~."""
    s = LinearSchedule(100)
    t, x0 = 30, 0.4
    n = 200_000
    g = torch.Generator().manual_seed(3)
    abar_prev = float(s.alphas_cumprod[t - 1])
    x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev) * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    beta = float(s.betas[t])
    xt = math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * torch.randn(n, generator=g, dtype=torch.float64)
    mean, var, _ = q_posterior(s, torch.full((n,), x0, dtype=torch.float64), xt, torch.full((n,), t))
    resid = (x_prev - mean).numpy()
    # the residual has mean 0 and variance beta~ (independent of x_t): 5 standard errors
    v = float(var[0])
    assert abs(resid.mean()) < Z * math.sqrt(v / n)
    assert abs(resid.var() - v) < Z * v * math.sqrt(2 / n)
    assert abs(np.corrcoef(resid, xt.numpy())[0, 1]) < Z / math.sqrt(n)


# --------------------------------------------------------------------------------------------- KL
def test_normal_kl_zero_for_equal_distributions():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(1000, generator=g)
    lv = torch.randn(1000, generator=g) * 3
    assert torch.all(normal_kl(m, lv, m, lv) == 0)
    assert torch.all(normal_kl(m, lv, m + 0.1, lv) > 0)
    assert torch.all(normal_kl(m, lv, m, lv + 0.1) > 0)


def test_normal_kl_closed_form_and_monte_carlo():
    cases = [(0.0, 0.0, 0.0, 0.0), (0.3, math.log(0.5), -0.2, math.log(2.0)), (1.0, math.log(3.0), 0.0, 0.0)]
    rng = np.random.default_rng(0)
    n = 400_000
    for m1, lv1, m2, lv2 in cases:
        kl = normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, lv1, m2, lv2))).item()
        s1, s2 = math.exp(0.5 * lv1), math.exp(0.5 * lv2)
        x = rng.normal(m1, s1, size=n)
        log_ratio = norm.logpdf(x, m1, s1) - norm.logpdf(x, m2, s2)
        se = log_ratio.std() / math.sqrt(n)
        assert abs(kl - log_ratio.mean()) < Z * se + 1e-12
        # and the textbook closed form
        closed = math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
        assert kl == pytest.approx(closed, abs=1e-12)


# --------------------------------------------------------------------------------------------- decoder
CENTRES = torch.tensor([-1.0 + 2.0 * k / 255.0 for k in range(256)], dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("mean", "scale"),
    [(0.0, 0.5), (0.3, 0.02), (-0.95, 0.1), (1.2, 0.3), (0.0, 1e-3), (0.5, 3.0), (-2.0, 0.05)],
)
def test_discretized_likelihood_sums_to_one(mean, scale, dtype):
    x = CENTRES.to(dtype)
    logp = discretized_gaussian_log_likelihood(
        x, torch.full_like(x, mean), torch.full_like(x, math.log(scale))
    ).double()
    assert torch.all(logp <= 1e-6)
    # Telescoping cdf differences: the sum is 1 up to the clamp at 1e-12 per bin (at most 256e-12) and rounding.
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=tol)


@pytest.mark.parametrize(("mean", "scale"), [(0.0, 0.5), (0.3, 0.02), (-0.95, 0.1), (0.9, 0.3), (0.0, 0.004)])
def test_discretized_likelihood_against_scipy_bin_mass(mean, scale):
    """Exact bin masses with Φ from scipy: interior bins [x - 1/255, x + 1/255], edge bins to ±infinity.

    The library uses Ho et al.'s tanh approximation of Φ, whose absolute error is below 2e-4 everywhere, so
    each bin's probability is within 4e-4 of the exact one; bins holding more than 5% of the mass agree to
    within 1% (relative).
    """
    x = CENTRES
    p = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, math.log(scale)))
    p = p.exp().numpy()
    xn = x.numpy()
    h = 1.0 / 255.0
    upper = norm.cdf((xn + h - mean) / scale)
    lower = norm.cdf((xn - h - mean) / scale)
    upper[-1], lower[0] = 1.0, 0.0
    exact = upper - lower
    assert exact.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(p, exact, atol=4e-4)
    big = exact > 0.05
    np.testing.assert_allclose(p[big], exact[big], rtol=1e-2)


def test_discretized_likelihood_edges_and_shapes():
    """Below -1 + half a bin the bin is (-inf, x + 1/255]; above 1 - half a bin it is [x - 1/255, inf)."""
    mean = torch.zeros(2, 3, 1, 1)
    log_scale = torch.full((2, 3, 1, 1), math.log(0.5))
    x = torch.tensor([-1.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(2, 3, 1, 1)
    logp = discretized_gaussian_log_likelihood(x, mean, log_scale).double()
    assert logp.shape == (2, 3, 1, 1)
    h = 1 / 255
    assert logp[0, 0].exp().item() == pytest.approx(norm.cdf((-1 + h) / 0.5), abs=4e-4)
    assert logp[0, 1].exp().item() == pytest.approx(norm.sf((1 - h) / 0.5), abs=4e-4)
    assert logp[0, 2].exp().item() == pytest.approx(norm.cdf(h / 0.5) - norm.cdf(-h / 0.5), abs=4e-4)


# --------------------------------------------------------------------------------------------- prior, mean_flat
def test_prior_bpd_closed_form():
    s = NoiseSchedule(torch.tensor([0.1, 0.2, 0.3]))
    abar_T = 0.9 * 0.8 * 0.7  # 0.504
    x0 = torch.tensor([[0.5, -1.0], [0.0, 0.2]], dtype=torch.float64)
    # KL(N(sqrt(abar) x0, 1 - abar) || N(0, 1)) = 0.5 (abar x0^2 + (1 - abar) - 1 - log(1 - abar)), in bits
    kl = 0.5 * (abar_T * x0.numpy() ** 2 + (1 - abar_T) - 1 - math.log(1 - abar_T)) / math.log(2)
    np.testing.assert_allclose(prior_bpd(s, x0).numpy(), kl.mean(1), rtol=1e-6)
    # the linear schedule at T = 1000 makes the prior term small (abar_T ≈ 4e-5)
    assert prior_bpd(LinearSchedule(1000), torch.ones(2, 3, 4, 4)).max().item() < 1e-4


def test_mean_flat():
    x = torch.arange(24.0).view(2, 3, 4)
    torch.testing.assert_close(mean_flat(x), torch.tensor([5.5, 17.5]))
