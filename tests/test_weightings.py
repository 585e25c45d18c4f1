"""Loss weightings against their papers' formulas, evaluated by hand on a three-step schedule."""

from __future__ import annotations

from fractions import Fraction as F

import numpy as np
import pytest
import torch

from diffusion_lab.diffusion import (
    WEIGHTINGS,
    Diffusion,
    MinSNRWeighting,
    NoiseSchedule,
    P2Weighting,
    SimpleLoss,
    SNRWeighting,
    UniformWeighting,
    VLBWeighting,
    build_schedule,
    build_weighting,
    q_sample,
)

# The schedule beta = (0.1, 0.2, 0.3), by hand in exact fractions:
BETA = [F(1, 10), F(2, 10), F(3, 10)]
ALPHA = [F(9, 10), F(8, 10), F(7, 10)]
ABAR = [F(9, 10), F(72, 100), F(504, 1000)]
ABAR_PREV = [F(1), F(9, 10), F(72, 100)]
# beta~ = beta (1 - abar_prev) / (1 - abar) = 0, 1/14, 21/124; index 0 clipped to index 1's value
BETA_TILDE_CLIPPED = [F(1, 14), F(1, 14), F(21, 124)]
BETA_LARGE = [F(1, 14), F(2, 10), F(3, 10)]
SNR = [F(9), F(18, 7), F(63, 62)]  # abar / (1 - abar)

SCHEDULE = NoiseSchedule(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
T3 = torch.tensor([0, 1, 2])
PREDS = ["eps", "x0", "v"]


def to_target_space(w_eps, pred):
    """A weight on the ε-MSE moved to the target's MSE: × |Δε|²/|Δtarget|² = 1 (ε), SNR (x_0), abar (v)."""
    factor = {"eps": [F(1)] * 3, "x0": SNR, "v": ABAR}[pred]
    return [w * f for w, f in zip(w_eps, factor)]


def check(weighting, pred, expected):
    w = weighting(Diffusion(SCHEDULE, pred), T3)
    assert w.shape == (3,)
    np.testing.assert_allclose(w.double().numpy(), [float(e) for e in expected], rtol=2e-6)


def test_hand_computed_tables_are_consistent():
    """The hand values above obey their definitions (so a typo in them cannot hide a library bug)."""
    for i in range(3):
        assert ALPHA[i] == 1 - BETA[i]
        assert ABAR[i] == (ABAR_PREV[i] * ALPHA[i])
        assert SNR[i] == ABAR[i] / (1 - ABAR[i])
    assert BETA[1] * (1 - ABAR_PREV[1]) / (1 - ABAR[1]) == BETA_TILDE_CLIPPED[1]
    assert BETA[2] * (1 - ABAR_PREV[2]) / (1 - ABAR[2]) == BETA_TILDE_CLIPPED[2]
    np.testing.assert_allclose(SCHEDULE.alphas_cumprod.numpy(), [float(a) for a in ABAR], rtol=1e-15)
    np.testing.assert_allclose(SCHEDULE.snr.numpy(), [float(a) for a in SNR], rtol=1e-14)


@pytest.mark.parametrize("pred", PREDS)
def test_uniform(pred):
    check(UniformWeighting(), pred, [1, 1, 1])


@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("sigma", ["small", "large"])
def test_vlb_is_ho_eq_12(pred, sigma):
    """λ_t = β_t² / (2 σ_t² α_t (1 - abar_t)) on the ε-MSE, × SNR for x_0, × abar for v."""
    var = BETA_TILDE_CLIPPED if sigma == "small" else BETA_LARGE
    w_eps = [BETA[i] ** 2 / (2 * var[i] * ALPHA[i] * (1 - ABAR[i])) for i in range(3)]
    if sigma == "small":
        assert w_eps == [F(7, 9), F(5, 4), F(75, 98)]  # by hand
    check(VLBWeighting(sigma), pred, to_target_space(w_eps, pred))


def test_vlb_x0_weight_is_the_posterior_mean_coefficient():
    """On the x_0-MSE, L_{t-1} = coef1² / (2σ²) |x_0 - x̂_0|² with coef1 = β sqrt(abar_prev) / (1 - abar)."""
    coef1 = [BETA[i] * float(ABAR_PREV[i]) ** 0.5 / (1 - ABAR[i]) for i in range(3)]
    expected = [float(c) ** 2 / (2 * float(v)) for c, v in zip(coef1, BETA_TILDE_CLIPPED)]
    w = VLBWeighting("small")(Diffusion(SCHEDULE, "x0"), T3)
    np.testing.assert_allclose(w.double().numpy(), expected, rtol=2e-6)


@pytest.mark.parametrize("gamma", [5.0, 2.0, 1.0])
def test_min_snr(gamma):
    """Hang et al.: min(SNR, γ) on the x_0-MSE; ε: min(SNR, γ)/SNR; v: min(SNR, γ)/(SNR + 1)."""
    g = F(gamma)
    m = [min(snr, g) for snr in SNR]
    check(MinSNRWeighting(gamma), "x0", m)
    check(MinSNRWeighting(gamma), "eps", [mi / snr for mi, snr in zip(m, SNR)])
    check(MinSNRWeighting(gamma), "v", [mi / (snr + 1) for mi, snr in zip(m, SNR)])
    if gamma == 5.0:  # by hand: SNR = 9, 18/7, 63/62
        check(MinSNRWeighting(gamma), "eps", [F(5, 9), 1, 1])
        check(MinSNRWeighting(gamma), "v", [F(1, 2), F(18, 25), F(63, 125)])


@pytest.mark.parametrize(("k", "gamma"), [(1.0, 1.0), (2.0, 0.5), (1.0, 0.0)])
@pytest.mark.parametrize("pred", PREDS)
def test_p2(pred, k, gamma):
    """Choi et al.: 1 / (k + SNR)^γ on the ε-MSE."""
    w_eps = [(float(k) + float(snr)) ** -gamma for snr in SNR]
    check(P2Weighting(k, gamma), pred, to_target_space(w_eps, pred))
    if (k, gamma) == (1.0, 1.0):
        check(P2Weighting(k, gamma), "eps", [F(1, 10), F(7, 25), F(62, 125)])


@pytest.mark.parametrize("pred", PREDS)
def test_snr_weighting(pred):
    """SNR on the x_0-MSE = the plain ε-MSE."""
    check(SNRWeighting(), pred, to_target_space([1, 1, 1], pred))
    if pred == "x0":
        check(SNRWeighting(), pred, SNR)


@pytest.mark.parametrize(
    "weighting",
    [UniformWeighting(), VLBWeighting(), SNRWeighting(), MinSNRWeighting(5.0), P2Weighting(1.0, 1.0)],
)
def test_weighted_loss_is_the_same_whatever_the_network_predicts(weighting):
    """A weighting is defined in one space and converted: for the same imperfect denoiser (the same x̂_0), the
    weighted simple loss must not depend on the parameterization — except uniform, which is per-target."""
    s = build_schedule("cosine", 100)
    g = torch.Generator().manual_seed(0)
    B = 16
    x0 = torch.rand(B, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(B, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.randint(1, 100, (B,), generator=g)
    xt = q_sample(s, x0, t, eps)
    x0_hat = x0 + 0.1 * torch.randn(B, 2, 3, 3, generator=g, dtype=torch.float64)
    losses = {}
    for pred in PREDS:
        d = Diffusion(s, pred)
        # the ε implied by x̂_0 at this x_t, then the output a network predicting `pred` would give
        eps_hat = (xt - s.at("sqrt_alphas_cumprod", t, 4) * x0_hat) / s.at(
            "sqrt_one_minus_alphas_cumprod", t, 4
        )
        out = d.prediction.from_x0_eps(s, x0_hat, eps_hat, t)
        losses[pred] = SimpleLoss(weighting)(d, out, x0, xt, t, eps)["loss"].double()
    if isinstance(weighting, UniformWeighting):
        assert not torch.allclose(losses["eps"], losses["x0"], rtol=1e-2)
    else:
        # SimpleLoss takes the output in float32, so the ε-error (down to ~1e-3 at high t) carries ~1e-4 rounding
        torch.testing.assert_close(losses["x0"], losses["eps"], rtol=2e-3, atol=0)
        torch.testing.assert_close(losses["v"], losses["eps"], rtol=2e-3, atol=0)


def test_registry_and_errors():
    assert sorted(WEIGHTINGS) == ["edm", "inverse_sigma2", "min_snr", "p2", "snr", "uniform", "vlb"]
    assert isinstance(build_weighting("min_snr", gamma=3.0), MinSNRWeighting)
    assert build_weighting("p2", k=2.0, gamma=0.5).k == 2.0
    with pytest.raises(
        ValueError, match=r"weighting='focal' is unknown; choose one of \['edm', 'inverse_sigma2', 'min_snr'"
    ):
        build_weighting("focal")
    with pytest.raises(ValueError, match=r"weighting\.gamma=0 is invalid"):
        MinSNRWeighting(0)
    with pytest.raises(ValueError, match=r"weighting\.sigma='medium' is invalid"):
        VLBWeighting("medium")
    with pytest.raises(ValueError, match=r"k=0\.0, gamma=1\.0"):
        P2Weighting(0.0, 1.0)
    with pytest.raises(ValueError, match=r"gamma=-1"):
        P2Weighting(1.0, -1)
    assert "gamma=5.0" in repr(MinSNRWeighting())


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("sigma", ["small", "large"])
def test_vlb_weight_is_float64_exact_at_every_step(schedule, sigma):
    """Ho et al. eq. (12) against float64 numpy from the betas alone, to 1e-6 relative at every t: the first
    steps' 1 - ᾱ_t is tiny, so it must not be taken from a float32 ᾱ."""
    sched = build_schedule(schedule, 1000)
    beta = sched.betas.numpy()
    alpha = 1.0 - beta
    abar = np.cumprod(alpha)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    beta_tilde = beta * (1.0 - abar_prev) / (1.0 - abar)
    var = np.concatenate([[beta_tilde[1]], beta_tilde[1:] if sigma == "small" else beta[1:]])
    expected = beta**2 / (2.0 * var * alpha * (1.0 - abar))
    got = VLBWeighting(sigma)(Diffusion(sched, "eps"), torch.arange(1000)).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
