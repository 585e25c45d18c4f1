"""Bits/dim from the full bound, with the exact denoiser of Gaussian data: every term has an analytic value.

Data x_0 ~ N(0, 0.3²) per dimension (inside [-1, 1] but for 0.09% edge-bin mass, which the quadrature
includes), fixed_small reverse variance, T = 50 (linear). For index t >= 1 the expected KL term is
0.5 coef1² Var(x_0 | x_t) / beta~_t; the prior term is a closed-form Gaussian KL; the decoder term at index 0 is a
double integral done with scipy (see ``gaussian_oracle.analytic_decoder_bits``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion_lab.diffusion import (
    Diffusion,
    LinearSchedule,
    calc_bpd_loop,
    prior_bpd,
    q_sample,
    vb_terms_bpd,
)
from gaussian_oracle import GaussianDenoiser, analytic_decoder_bits, analytic_vb_bits, tables

MU, S = 0.0, 0.3
T = 50
Z = 5.0  # standard errors


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors on a shared 2-core CPU


@pytest.fixture(scope="module")
def analytic():
    betas = LinearSchedule(T).betas.numpy()
    kl, prior = analytic_vb_bits(betas, MU, S)
    return kl, prior, analytic_decoder_bits(betas, MU, S)


@pytest.mark.parametrize("pred", ["eps", "x0", "v", "mean"])
def test_bpd_of_the_exact_denoiser_matches_analytic_value(pred, analytic):
    kl, prior, decoder = analytic
    s = LinearSchedule(T)
    d = Diffusion(s, pred, "fixed_small")
    model = GaussianDenoiser(tables(s.betas.numpy())["abar"], MU, S, pred)
    g = torch.Generator().manual_seed(0)
    B = 2000
    x0 = MU + S * torch.randn(B, 1, 8, 8, generator=g)  # each image: 64 iid dimensions
    res = calc_bpd_loop(d, model, x0, generator=g, clip_denoised=False)  # the analytic values: unclipped
    assert res["vb"].shape == res["mse"].shape == res["x0_mse"].shape == (B, T)
    assert res["total_bpd"].shape == res["prior_bpd"].shape == (B,)
    assert model.calls == T and model.timesteps == list(range(T - 1, -1, -1))

    vb = res["vb"].double().numpy()
    mean, se = vb.mean(0), vb.std(0, ddof=1) / math.sqrt(B)
    # KL terms, index >= 1: within 5 standard errors of the per-t image average (images are iid), plus a
    # float32 allowance of 1e-4 relative.
    err = np.abs(mean[1:] - kl[1:])
    assert np.all(err < Z * se[1:] + 1e-4 * kl[1:]), np.max((err - 1e-4 * kl[1:]) / se[1:])
    # the decoder term: 5 standard errors plus 1e-3 relative for the tanh approximation of Φ
    assert abs(mean[0] - decoder) < Z * se[0] + 1e-3 * decoder, (mean[0], decoder, se[0])
    # the prior term is deterministic given x_0: KL(N(sqrt(abar_T) x_0, 1 - abar_T) || N(0, 1)) per image
    abar_T = tables(s.betas.numpy())["abar"][-1]
    x = x0.double().numpy().reshape(B, -1)
    prior_per_image = 0.5 * (abar_T * x**2 + (1 - abar_T) - 1 - math.log(1 - abar_T)).mean(1) / math.log(2)
    np.testing.assert_allclose(res["prior_bpd"].double().numpy(), prior_per_image, rtol=1e-4, atol=1e-10)
    assert (
        abs(res["prior_bpd"].double().mean().item() - prior)
        < Z * prior_per_image.std() / math.sqrt(B) + 1e-10
    )
    # the total: sum of the terms, and its expectation
    total = res["total_bpd"].double().numpy()
    np.testing.assert_allclose(total, vb.sum(1) + res["prior_bpd"].double().numpy(), rtol=1e-6)
    expected_total = np.sum(kl[1:]) + decoder + prior
    assert abs(total.mean() - expected_total) < Z * total.std(ddof=1) / math.sqrt(B) + 1e-3 * decoder
    # the exact denoiser's ε-MSE is E[Var(ε | x_t)] = 1 - sigma² / (a² s² + sigma²) ... checked at a few t
    abar = tables(s.betas.numpy())["abar"]
    for t in (0, 10, 49):
        var_eps = 1 - (1 - abar[t]) / (abar[t] * S * S + 1 - abar[t])
        m = res["mse"][:, t].double().numpy()
        assert abs(m.mean() - var_eps) < Z * m.std(ddof=1) / math.sqrt(B) + 1e-5


def test_decoder_term_is_the_quadrature_for_a_second_data_scale():
    """The same decoder comparison with s = 0.6 (1% of the mass in the edge bins), on vb_terms_bpd directly."""
    s_data = 0.6
    s = LinearSchedule(T)
    d = Diffusion(s, "eps", "fixed_small")
    model = GaussianDenoiser(tables(s.betas.numpy())["abar"], MU, s_data, "eps")
    g = torch.Generator().manual_seed(1)
    B = 2000
    x0 = MU + s_data * torch.randn(B, 1, 8, 8, generator=g)
    t = torch.zeros(B, dtype=torch.long)
    xt = q_sample(s, x0, t, torch.randn(x0.shape, generator=g))
    vb = vb_terms_bpd(d, model(xt, t), x0, xt, t).double().numpy()
    decoder = analytic_decoder_bits(s.betas.numpy(), MU, s_data)
    se = vb.std(ddof=1) / math.sqrt(B)
    assert abs(vb.mean() - decoder) < Z * se + 1e-3 * decoder, (vb.mean(), decoder, se)


def test_bpd_is_worse_for_a_wrong_denoiser(analytic):
    """A denoiser for the wrong data scale pays for it in every KL term (the bound is not vacuous)."""
    kl, _, _ = analytic
    s = LinearSchedule(T)
    d = Diffusion(s, "eps", "fixed_small")
    wrong = GaussianDenoiser(tables(s.betas.numpy())["abar"], MU, 0.6, "eps")
    g = torch.Generator().manual_seed(2)
    x0 = MU + S * torch.randn(500, 1, 8, 8, generator=g)
    vb = calc_bpd_loop(d, wrong, x0, generator=g, clip_denoised=False)["vb"].double().numpy().mean(0)
    assert np.all(vb[1:10] > 1.05 * kl[1:10])


def test_prior_bpd_matches_calc_bpd_loop():
    s = LinearSchedule(10)
    d = Diffusion(s, "eps", "fixed_small")
    model = GaussianDenoiser(tables(s.betas.numpy())["abar"], MU, S, "eps")
    x0 = torch.rand(3, 1, 2, 2) * 2 - 1
    res = calc_bpd_loop(d, model, x0)
    torch.testing.assert_close(res["prior_bpd"], prior_bpd(s, x0))


def test_clipped_bound_clips_the_predicted_x0_before_the_mean():
    """improved-diffusion's protocol: with clip_denoised the predicted x_0 is clipped to [-1, 1] before it makes
    μ_θ, for every term (KL and decoder) and the ε / x_0 errors beside them; the prior term is the same."""
    s = LinearSchedule(10)
    d = Diffusion(s, "x0", "fixed_small")
    torch.manual_seed(3)
    x0 = torch.rand(4, 1, 3, 3) * 2 - 1
    far = 3.0 * torch.randn(4, 1, 3, 3)  # a predicted x_0 mostly outside [-1, 1]

    def model(xt, t):
        return far

    clipped = calc_bpd_loop(d, model, x0, generator=torch.Generator().manual_seed(0))
    plain = calc_bpd_loop(d, model, x0, generator=torch.Generator().manual_seed(0), clip_denoised=False)
    inside = calc_bpd_loop(
        d, lambda xt, t: far.clamp(-1, 1), x0, generator=torch.Generator().manual_seed(0), clip_denoised=False
    )
    for key in ("vb", "total_bpd", "mse", "x0_mse"):
        torch.testing.assert_close(clipped[key], inside[key])
        assert not torch.allclose(clipped[key], plain[key]), key
    torch.testing.assert_close(clipped["prior_bpd"], plain["prior_bpd"])
    # a prediction already inside [-1, 1] is untouched: both bounds agree
    both = [
        calc_bpd_loop(
            d, lambda xt, t: far.clamp(-1, 1), x0, generator=torch.Generator().manual_seed(0), clip_denoised=c
        )
        for c in (True, False)
    ]
    torch.testing.assert_close(both[0]["total_bpd"], both[1]["total_bpd"])
