"""ε / x_0 / v / μ̃ parameterizations, the reverse variances and ``Diffusion``'s reading of a network's output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion_lab.diffusion import (
    PREDICTIONS,
    VARIANCES,
    Diffusion,
    EpsPrediction,
    LinearSchedule,
    MeanPrediction,
    NoiseSchedule,
    VPrediction,
    X0Prediction,
    build_prediction,
    build_schedule,
    build_variance,
    q_posterior,
    q_sample,
)
from gaussian_oracle import tables

NAMES = ["linear", "cosine", "sigmoid", "quadratic"]
PREDS = ["eps", "x0", "v", "mean"]


def batch(T: int, shape=(2, 3, 4, 4), seed=0, dtype=torch.float64):
    """x_0, ε and every timestep 0..T-1 (tiled to the batch), with the first and last always present."""
    g = torch.Generator().manual_seed(seed)
    t = torch.cat([torch.tensor([0, T - 1]), torch.randint(0, T, (shape[0] - 2,), generator=g)])
    x0 = torch.rand(shape, generator=g, dtype=dtype) * 2 - 1
    eps = torch.randn(shape, generator=g, dtype=dtype)
    return x0, eps, t


@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("name", NAMES)
def test_round_trips_every_schedule(name, pred):
    """from_x0_eps then to_x0 / to_eps recovers x_0 and ε at every t (float64 data with the float32 tables)."""
    T = 1000
    s = build_schedule(name, T)
    p = build_prediction(pred)
    g = torch.Generator().manual_seed(1)
    t = torch.arange(T)
    x0 = torch.rand(T, 3, dtype=torch.float64, generator=g) * 2 - 1
    eps = torch.randn(T, 3, dtype=torch.float64, generator=g)
    xt = q_sample(s, x0, t, eps)
    out = p.from_x0_eps(s, x0, eps, t)
    torch.testing.assert_close(p.target(s, x0, eps, xt, t), out)
    # ε and x_0: an exact algebraic inverse with the same coefficients, so only float64 rounding remains
    # (amplified by 1/sqrt(abar) <= 2e4 for cosine at T = 1000). v: the inverse relies on a² + s² = 1, which the
    # float32 tables of a = sqrt(abar), s = sqrt(1 - abar) satisfy to ~2 float32 ulps, times |x_0|, |ε| <= ~5.
    atol = 1e-6 if pred == "v" else 1e-10
    torch.testing.assert_close(p.to_x0(s, out, xt, t), x0, rtol=0, atol=atol)
    torch.testing.assert_close(p.to_eps(s, out, xt, t), eps, rtol=0, atol=atol)


@pytest.mark.parametrize("pred", PREDS)
def test_round_trip_float32_moderate_t(pred):
    """The same in float32 where abar is not tiny (x_0 from ε amplifies rounding by 1/sqrt(abar) ≤ ~6 here)."""
    s = LinearSchedule(1000)
    p = build_prediction(pred)
    t = torch.arange(0, 700)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(700, 8, generator=g) * 2 - 1
    eps = torch.randn(700, 8, generator=g)
    xt = q_sample(s, x0, t, eps)
    out = p.from_x0_eps(s, x0, eps, t)
    # μ̃: x_0 = (μ̃ - c_t x_t) / c_0 divides the output's rounding by c_0 (down to ~1e-3 here), ε by a further
    # s / a: the same tolerance, held in the output's own space (by the exact derivatives of the read-outs).
    x0_gain = 1 / s.at("posterior_mean_coef1", t, 2) if pred == "mean" else 1
    eps_gain = p.eps_error_scale(s, t).sqrt().unsqueeze(1) if pred == "mean" else 1
    torch.testing.assert_close(
        (p.to_x0(s, out, xt, t) - x0) / x0_gain, torch.zeros_like(x0), rtol=0, atol=2e-5
    )
    torch.testing.assert_close(
        (p.to_eps(s, out, xt, t) - eps) / eps_gain, torch.zeros_like(eps), rtol=0, atol=2e-5
    )


def test_targets_are_the_papers_formulas():
    """ε: the noise; x_0: the data; v = sqrt(abar) ε - sqrt(1 - abar) x_0 (Salimans & Ho 2022, float64 here)."""
    s = build_schedule("cosine", 100)
    x0, eps, t = batch(100, shape=(6, 2))
    abar = torch.from_numpy(np.cumprod(1 - s.betas.numpy()))[t].unsqueeze(1)
    xt = q_sample(s, x0, t, eps)
    torch.testing.assert_close(EpsPrediction().target(s, x0, eps, xt, t), eps)
    torch.testing.assert_close(X0Prediction().target(s, x0, eps, xt, t), x0)
    torch.testing.assert_close(
        VPrediction().target(s, x0, eps, xt, t),
        abar.sqrt() * eps - (1 - abar).sqrt() * x0,
        rtol=1e-6,
        atol=1e-6,
    )
    # μ̃ = β_t sqrt(abar_{t-1}) / (1 - abar_t) x_0 + (1 - abar_{t-1}) sqrt(α_t) / (1 - abar_t) x_t (Ho et al. eq. 7)
    beta = s.betas.double()[t].unsqueeze(1)
    abar_all = torch.from_numpy(np.cumprod(1 - s.betas.numpy()))
    abar_prev = torch.cat([torch.ones(1, dtype=abar_all.dtype), abar_all[:-1]])[t].unsqueeze(1)
    mu = beta * abar_prev.sqrt() / (1 - abar) * x0 + (1 - abar_prev) * (1 - beta).sqrt() / (1 - abar) * xt
    torch.testing.assert_close(MeanPrediction().target(s, x0, eps, xt, t), mu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(MeanPrediction().from_x0_eps(s, x0, eps, t), mu, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_eps_error_scale_measured_by_perturbation(name, pred):
    """|Δε|² / |Δtarget|² measured by perturbing the network's output; expected ε: 1, x_0: SNR, v: abar."""
    T = 200
    s = build_schedule(name, T)
    p = build_prediction(pred)
    t = torch.arange(T)
    g = torch.Generator().manual_seed(4)
    xt = torch.randn(T, 16, dtype=torch.float64, generator=g)
    out = torch.randn(T, 16, dtype=torch.float64, generator=g)
    delta = 1e-3 * torch.randn(T, 16, dtype=torch.float64, generator=g)
    d_eps = p.to_eps(s, out + delta, xt, t) - p.to_eps(s, out, xt, t)
    measured = (d_eps**2).sum(1) / (delta**2).sum(1)
    scale = p.eps_error_scale(s, t).double()
    assert scale.shape == (T,)
    torch.testing.assert_close(scale, measured, rtol=1e-5, atol=0)
    abar = np.cumprod(1 - s.betas.numpy())
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    coef1 = s.betas.numpy() * np.sqrt(abar_prev) / (1 - abar)
    expected = {"eps": np.ones(T), "x0": abar / (1 - abar), "v": abar, "mean": abar / (1 - abar) / coef1**2}[
        pred
    ]
    np.testing.assert_allclose(scale.numpy(), expected, rtol=1e-5)


def test_build_prediction():
    assert sorted(PREDICTIONS) == ["eps", "mean", "v", "x0"]
    for name, cls in PREDICTIONS.items():
        assert isinstance(build_prediction(name), cls)
    with pytest.raises(
        ValueError, match=r"prediction='noise' is unknown; choose one of \['eps', 'mean', 'v', 'x0'\]"
    ):
        build_prediction("noise")


# --------------------------------------------------------------------------------------------- variances
SMALL = NoiseSchedule(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
# by hand: abar = 0.9, 0.72, 0.504; abar_prev = 1, 0.9, 0.72; beta~ = beta (1 - abar_prev)/(1 - abar)
BETA_TILDE = [0.0, 0.2 * 0.1 / 0.28, 0.3 * 0.28 / 0.496]
T3 = torch.tensor([0, 1, 2])


def test_fixed_small_is_clipped_posterior_variance():
    lv = build_variance("fixed_small").log_variance(SMALL, None, T3, 1)
    np.testing.assert_allclose(lv.exp().numpy(), [BETA_TILDE[1], BETA_TILDE[1], BETA_TILDE[2]], rtol=1e-6)


def test_fixed_large_is_beta_with_beta_tilde_first():
    lv = build_variance("fixed_large").log_variance(SMALL, None, T3, 1)
    np.testing.assert_allclose(lv.exp().numpy(), [BETA_TILDE[1], 0.2, 0.3], rtol=1e-6)


def test_learned_returns_raw_output():
    raw = torch.randn(3, 2, 4, 4)
    assert build_variance("learned").log_variance(SMALL, raw, T3, 4) is raw


def test_learned_range_interpolates_log_variances():
    v = build_variance("learned_range")
    lo = np.log([BETA_TILDE[1], BETA_TILDE[1], BETA_TILDE[2]])
    hi = np.log([0.1, 0.2, 0.3])
    for frac_out, w in [(-1.0, 0.0), (1.0, 1.0), (0.0, 0.5), (0.5, 0.75)]:
        out = torch.full((3, 1), frac_out)
        lv = v.log_variance(SMALL, out, T3, 2).squeeze(1).numpy()
        np.testing.assert_allclose(lv, w * hi + (1 - w) * lo, rtol=1e-6)


def test_variance_registry_and_channels():
    assert sorted(VARIANCES) == ["fixed_large", "fixed_small", "learned", "learned_range"]
    factors = {name: build_variance(name).out_channel_factor for name in VARIANCES}
    assert factors == {"fixed_small": 1, "fixed_large": 1, "learned": 2, "learned_range": 2}
    with pytest.raises(ValueError, match=r"variance='huge' is unknown; choose one of"):
        build_variance("huge")


@pytest.mark.parametrize("variance", list(VARIANCES))
def test_split_output_checks_channels(variance):
    d = Diffusion(SMALL, "eps", variance)
    k = d.variance.out_channel_factor
    out = torch.randn(2, 3 * k, 4, 4)
    mean, var = d.split_output(out, 3)
    assert mean.shape == (2, 3, 4, 4)
    if k == 2:
        torch.testing.assert_close(torch.cat([mean, var], 1), out)
    else:
        assert var is None
    wrong = torch.randn(2, 3 * (3 - k), 4, 4)
    with pytest.raises(
        ValueError, match=rf"outputs {3 * (3 - k)} channels but variance={variance} needs {3 * k}"
    ):
        d.split_output(wrong, 3)


# --------------------------------------------------------------------------------------------- Diffusion.denoise
@pytest.mark.parametrize("pred", PREDS)
def test_denoise_perfect_output_gives_the_true_posterior(pred):
    s = build_schedule("cosine", 50)
    d = Diffusion(s, pred, "fixed_small")
    x0, eps, t = batch(50, shape=(8, 2, 3), dtype=torch.float64)
    xt = q_sample(s, x0, t, eps)
    out = d.denoise(d.prediction.from_x0_eps(s, x0, eps, t), xt, t)
    atol = 1e-6 if pred == "v" else 1e-8  # see test_round_trips_every_schedule
    torch.testing.assert_close(out.pred_x0, x0, rtol=0, atol=atol)
    torch.testing.assert_close(out.pred_eps, eps, rtol=0, atol=atol)
    true_mean, _, true_lv = q_posterior(s, x0, xt, t)
    torch.testing.assert_close(out.mean, true_mean, rtol=0, atol=atol)
    torch.testing.assert_close(out.log_variance.expand_as(true_lv).double(), true_lv.double())
    assert out.var_out is None


def test_a_respaced_mean_prediction_reads_the_output_as_the_trained_chains_mean():
    """μ̃ belongs to the chain the network learnt on: on a 20-step grid of a 1000-step schedule the output (the
    1000-step mean at the original timestep) still gives back x_0 and ε, and the step's mean is the 20-step
    chain's posterior mean. Read with the respaced chain's own coefficients it would not."""
    s = LinearSchedule(1000)
    d = Diffusion(s, "mean", "fixed_small").respaced(20).respaced(10)  # twice: the maps compose
    x0, eps, i = batch(10, shape=(6, 2, 3), dtype=torch.float64)
    t = d.model_timesteps(i)
    xt = q_sample(s, x0, t, eps)
    out = d.denoise(MeanPrediction().from_x0_eps(s, x0, eps, t), xt, i)
    torch.testing.assert_close(out.pred_x0, x0, rtol=0, atol=1e-8)
    torch.testing.assert_close(out.pred_eps, eps, rtol=0, atol=1e-8)
    torch.testing.assert_close(out.mean, q_posterior(d.schedule, x0, xt, i)[0], rtol=0, atol=1e-8)
    plain = Diffusion(d.schedule, "mean", "fixed_small")  # the respaced grid's own coefficients
    misread = plain.denoise(MeanPrediction().from_x0_eps(s, x0, eps, t), xt, i).pred_x0
    assert (misread - x0).abs().max() > 0.1


def test_denoise_clips_x0_and_recomputes_eps():
    """With clip_denoised the predicted x_0 is clamped to [-1, 1] and ε is the one implied by the clamped x_0."""
    s = LinearSchedule(100)
    d = Diffusion(s, "x0", "fixed_small")
    t = torch.full((4,), 10)
    xt = torch.tensor([[0.5], [3.0], [-3.0], [0.0]], dtype=torch.float64)
    out = torch.tensor([[0.2], [2.0], [-1.5], [0.99]], dtype=torch.float64)
    res = d.denoise(out, xt, t, clip_denoised=True)
    torch.testing.assert_close(res.pred_x0, torch.tensor([[0.2], [1.0], [-1.0], [0.99]], dtype=torch.float64))
    abar = float(np.cumprod(1 - s.betas.numpy())[10])
    eps = (xt - math.sqrt(abar) * res.pred_x0) / math.sqrt(1 - abar)
    torch.testing.assert_close(res.pred_eps, eps, rtol=1e-6, atol=1e-6)
    tb = tables(s.betas.numpy())
    mean = tb["coef1"][10] * res.pred_x0 + tb["coef2"][10] * xt
    torch.testing.assert_close(res.mean, mean, rtol=1e-6, atol=1e-6)


def test_denoise_learned_range_reads_variance_channels():
    d = Diffusion(SMALL, "eps", "learned_range")
    out = torch.cat([torch.zeros(3, 1), torch.full((3, 1), 1.0)], 1)
    res = d.denoise(out, torch.zeros(3, 1), T3)
    np.testing.assert_allclose(res.log_variance.squeeze(1).exp().numpy(), [0.1, 0.2, 0.3], rtol=1e-6)
    torch.testing.assert_close(res.var_out, out[:, 1:])


def test_from_names_and_repr():
    d = Diffusion.from_names("cosine", 64, "v", "learned_range")
    assert d.num_timesteps == 64
    assert isinstance(d.prediction, VPrediction)
    assert d.variance.name == "learned_range"
    assert "CosineSchedule(T=64" in repr(d)
