"""Noise schedules: every table against an independent float64 derivation from the betas, and the errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion_lab.diffusion import (
    SCHEDULES,
    CosineSchedule,
    LinearSchedule,
    NoiseSchedule,
    QuadraticSchedule,
    SigmoidSchedule,
    build_schedule,
)
from gaussian_oracle import tables

NAMES = ["linear", "cosine", "sigmoid", "quadratic"]
LENGTHS = [1, 2, 10, 50, 1000, 4000]
TABLES = [
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "snr",
    "log_snr",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "large_log_variance",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
]


def np_(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("name", NAMES)
def test_tables_match_independent_derivation(name, T):
    s = build_schedule(name, T)
    assert isinstance(s, SCHEDULES[name]) and s.name == name
    assert s.num_timesteps == T == len(s)
    for key in TABLES:
        table = getattr(s, key)
        assert table.dtype == torch.float64, key
        assert table.shape == (T,), key
        assert table.device.type == "cpu", key

    betas = np_(s.betas)
    assert np.all((betas > 0) & (betas < 1))
    ref = tables(betas)
    # abar is the running product of (1 - beta); the rest are the paper's formulas (Ho et al. eqs. 4, 6, 7).
    np.testing.assert_allclose(np_(s.alphas), 1.0 - betas, rtol=0, atol=0)
    np.testing.assert_allclose(np_(s.alphas_cumprod), np.cumprod(1.0 - betas), rtol=1e-13)
    np.testing.assert_allclose(np_(s.alphas_cumprod_prev), ref["abar_prev"], rtol=1e-13)
    assert s.alphas_cumprod_prev[0] == 1.0
    np.testing.assert_allclose(np_(s.sqrt_alphas_cumprod), np.sqrt(ref["abar"]), rtol=1e-13)
    np.testing.assert_allclose(np_(s.sqrt_one_minus_alphas_cumprod), np.sqrt(1 - ref["abar"]), rtol=1e-12)
    snr = ref["abar"] / (1.0 - ref["abar"])
    np.testing.assert_allclose(np_(s.snr), snr, rtol=1e-12)
    np.testing.assert_allclose(np_(s.log_snr), np.log(snr), rtol=1e-12, atol=1e-12)
    # SNR strictly decreasing (abar strictly decreasing because every beta > 0)
    assert np.all(np.diff(np_(s.snr)) < 0)
    # Posterior q(x_{t-1} | x_t, x_0): beta~ = beta (1 - abar_prev)/(1 - abar); coefficients of x_0 and x_t.
    np.testing.assert_allclose(
        np_(s.posterior_variance), betas * (1 - ref["abar_prev"]) / (1 - ref["abar"]), rtol=1e-12, atol=1e-300
    )
    assert s.posterior_variance[0] == 0.0
    np.testing.assert_allclose(
        np_(s.posterior_mean_coef1), betas * np.sqrt(ref["abar_prev"]) / (1 - ref["abar"]), rtol=1e-12
    )
    np.testing.assert_allclose(
        np_(s.posterior_mean_coef2),
        (1 - ref["abar_prev"]) * np.sqrt(1 - betas) / (1 - ref["abar"]),
        rtol=1e-12,
        atol=1e-300,
    )
    # The clipped log variance: beta~ with index 0 replaced by beta~ of index 1 (beta_1 itself when T = 1).
    first = ref["post_var"][1] if T > 1 else betas[0]
    np.testing.assert_allclose(
        np_(s.posterior_log_variance_clipped), np.log(np.r_[first, ref["post_var"][1:]]), rtol=1e-12
    )
    np.testing.assert_allclose(np_(s.large_log_variance), np.log(np.r_[first, betas[1:]]), rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_posterior_coefficients_sum_rule(name):
    """The posterior mean must be unbiased in the sense E[mean | x_0] = sqrt(abar_prev) x_0:
    coef1 + coef2 sqrt(abar) = sqrt(abar_prev) (an identity of the formulas, checked in float64)."""
    s = build_schedule(name, 1000)
    lhs = np_(s.posterior_mean_coef1) + np_(s.posterior_mean_coef2) * np.sqrt(np_(s.alphas_cumprod))
    np.testing.assert_allclose(lhs, np.sqrt(np_(s.alphas_cumprod_prev)), rtol=1e-12)


def test_linear_is_ho_at_1000_and_scaled_otherwise():
    # T = 1000: exactly Ho et al.'s linspace(1e-4, 0.02, 1000) (up to the last bit of float64 linspace)
    np.testing.assert_allclose(np_(LinearSchedule(1000).betas), np.linspace(1e-4, 0.02, 1000), rtol=1e-15)
    for T in (50, 200, 4000):
        scale = 1000.0 / T
        np.testing.assert_allclose(
            np_(LinearSchedule(T).betas), np.linspace(scale * 1e-4, scale * 0.02, T), rtol=1e-14
        )
    # T = 10: 1000/T * 0.02 = 2 would leave (0, 1); the end is clipped at 0.999 so the schedule stays valid.
    np.testing.assert_allclose(np_(LinearSchedule(10).betas), np.linspace(0.01, 0.999, 10), rtol=1e-14)
    # T = 1: a single step with beta = 1000 * 1e-4
    np.testing.assert_allclose(np_(LinearSchedule(1).betas), [0.1], rtol=1e-15)


def test_quadratic_has_linear_sqrt_beta():
    for T in (50, 1000):
        scale = 1000.0 / T
        sq = np.sqrt(np_(QuadraticSchedule(T).betas))
        np.testing.assert_allclose(
            sq, np.linspace(math.sqrt(scale * 1e-4), math.sqrt(scale * 0.02), T), rtol=1e-13
        )


@pytest.mark.parametrize("T", [10, 1000, 4000])
def test_cosine_closed_form(T):
    """Nichol & Dhariwal eq. 17: abar(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) π/2), s = 0.008; index t is
    step t + 1. beta = 1 - abar_t/abar_{t-1} is clipped at 0.999, which only bites at the very last step (f(T)
    = 0 would give beta = 1)."""
    s = CosineSchedule(T)
    off = 0.008

    def f(u):
        return np.cos((u + off) / (1 + off) * np.pi / 2) ** 2

    closed = f(np.arange(1, T + 1) / T) / f(0.0)
    abar = np_(s.alphas_cumprod)
    betas = np_(s.betas)
    clipped = betas >= 0.999 - 1e-15
    assert clipped[-1] and not clipped[:-1].any()
    np.testing.assert_allclose(abar[:-1], closed[:-1], rtol=1e-11)
    # The last step: abar_T = abar_{T-1} * (1 - 0.999) instead of f(1)/f(0) = 0.
    np.testing.assert_allclose(abar[-1], closed[-2] * 1e-3, rtol=1e-11)
    assert np.all(np.diff(abar) < 0)
    if T == 1000:
        # abar_{T-1} = sin²(π/2 · 0.001/1.008)/f(0) ≈ 2.4e-6, times 1e-3 => abar_T ≈ 2.4e-9 (well below 1e-8)
        assert 1e-9 < abar[-1] < 1e-8


def test_sigmoid_closed_form():
    """abar(u) = (sigmoid(end/τ) - sigmoid((u (end - start) + start)/τ)) / (sigmoid(end/τ) - sigmoid(start/τ))."""
    T = 1000
    s = SigmoidSchedule(T, start=-3.0, end=3.0, tau=1.0)

    def sig(x):
        return 1 / (1 + np.exp(-x))

    u = np.arange(1, T + 1) / T
    closed = (sig(3.0) - sig(6.0 * u - 3.0)) / (sig(3.0) - sig(-3.0))
    np.testing.assert_allclose(np_(s.alphas_cumprod)[:-1], closed[:-1], rtol=1e-10)
    assert s.betas[-1] == pytest.approx(0.999)
    assert np.all(np.diff(np_(s.alphas_cumprod)) < 0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [2, 50, 1000, 4000])
def test_respaced_keeps_alpha_bar_exactly(name, T):
    s = build_schedule(name, T)
    rng = np.random.default_rng(T)
    for n in (1, 2, min(T, 17), T):
        kept = np.sort(rng.choice(T, size=n, replace=False)).tolist()
        r = s.respaced(kept)
        assert r.num_timesteps == n
        assert torch.equal(r.alphas_cumprod, s.alphas_cumprod[kept])
        # ... and its betas are the ones whose running product gives them (to float64 rounding; 1 - beta
        # loses the relative precision of a tiny abar, hence the absolute tolerance)
        np.testing.assert_allclose(
            np.cumprod(1 - np_(r.betas)), np_(s.alphas_cumprod)[kept], rtol=1e-12, atol=1e-15
        )
        assert torch.all((r.betas > 0) & (r.betas < 1))
    # unsorted input is sorted first
    assert torch.equal(s.respaced([T - 1, 0]).alphas_cumprod, s.alphas_cumprod[[0, T - 1]])


def test_respaced_first_step_and_posterior():
    """Respacing to every other step: beta'_i = 1 - abar[k_i]/abar[k_{i-1}], beta'_0 = 1 - abar[k_0]."""
    s = LinearSchedule(100)
    kept = list(range(0, 100, 2))
    r = s.respaced(kept)
    abar = np_(s.alphas_cumprod)[kept]
    expected_betas = 1 - abar / np.r_[1.0, abar[:-1]]
    np.testing.assert_allclose(np_(r.betas), expected_betas, rtol=1e-12)
    np.testing.assert_allclose(np_(r.posterior_variance), tables(expected_betas)["post_var"], rtol=1e-10)


def test_at_gathers_float32_broadcastable():
    s = CosineSchedule(100)
    t = torch.tensor([0, 5, 99])
    v = s.at("alphas_cumprod", t, ndim=4)
    assert v.shape == (3, 1, 1, 1) and v.dtype == torch.float32
    np.testing.assert_allclose(v.flatten().numpy(), np_(s.alphas_cumprod)[[0, 5, 99]].astype(np.float32))
    assert s.at("betas", t).shape == (3,)


def test_tables_are_not_module_state():
    """The schedule is a plain object: nothing for an optimizer or load_state_dict to find."""
    s = LinearSchedule(10)
    assert not isinstance(s, torch.nn.Module)
    assert not s.betas.requires_grad


# --------------------------------------------------------------------------------------------- errors
def test_unknown_name_names_option_value_and_choices():
    with pytest.raises(ValueError, match=r"schedule='foo'") as e:
        build_schedule("foo")
    for name in NAMES:
        assert name in str(e.value)


@pytest.mark.parametrize("bad", [0, -3])
@pytest.mark.parametrize("name", NAMES)
def test_T_below_one(name, bad):
    with pytest.raises(ValueError, match=rf"schedule\.num_timesteps={bad}.*integer >= 1"):
        build_schedule(name, bad)


@pytest.mark.parametrize("bad", [10.0, 2.5, "10", True])
def test_T_not_int(bad):
    with pytest.raises(ValueError, match=r"schedule\.num_timesteps=.*integer >= 1"):
        LinearSchedule(bad)


@pytest.mark.parametrize("betas", [[0.5, 1.0], [0.0, 0.1], [0.1, -0.2], [0.1, float("nan")], [1.5]])
def test_betas_outside_open_unit_interval(betas):
    with pytest.raises(ValueError, match=r"schedule betas must lie in the open interval \(0, 1\); got beta="):
        NoiseSchedule(torch.tensor(betas))
    with pytest.raises(ValueError, match=r"got beta=1\.0"):
        NoiseSchedule(torch.tensor([0.5, 1.0]))


def test_empty_betas():
    with pytest.raises(ValueError, match="T must be >= 1"):
        NoiseSchedule(torch.tensor([]))


def test_sigmoid_tau():
    with pytest.raises(ValueError, match=r"schedule\.tau=0"):
        SigmoidSchedule(10, tau=0)
