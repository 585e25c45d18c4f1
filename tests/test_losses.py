"""Training losses: per-sample terms, zero at the optimum, the bound's terms against an independent KL, the
hybrid loss's stop-gradient, and the loss/variance compatibility check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from diffusion_lab.diffusion import (
    LOSSES,
    Diffusion,
    HybridLoss,
    MinSNRWeighting,
    SimpleLoss,
    VLBLoss,
    build_loss,
    build_schedule,
    check_compatible,
    q_sample,
    vb_terms_bpd,
)
from gaussian_oracle import tables

PREDS = ["eps", "x0", "v", "mean"]
LN2 = math.log(2.0)


def setup(T=100, B=12, C=2, seed=0, name="cosine", centres=False):
    s = build_schedule(name, T)
    g = torch.Generator().manual_seed(seed)
    if centres:  # data on the 256 levels, as the bound assumes
        x0 = torch.randint(0, 256, (B, C, 4, 4), generator=g).float() * 2 / 255 - 1
    else:
        x0 = torch.rand(B, C, 4, 4, generator=g) * 2 - 1
    eps = torch.randn(B, C, 4, 4, generator=g)
    t = torch.cat([torch.tensor([0, 1, T - 1]), torch.randint(0, T, (B - 3,), generator=g)])
    xt = q_sample(s, x0, t, eps)
    return s, x0, eps, t, xt, g


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range", "learned"])
@pytest.mark.parametrize("pred", PREDS)
def test_losses_return_per_sample_terms(pred, variance):
    s, x0, eps, t, xt, g = setup()
    d = Diffusion(s, pred, variance)
    out = torch.randn(12, 2 * d.variance.out_channel_factor, 4, 4, generator=g)
    losses = [VLBLoss()]
    losses += [HybridLoss()] if d.variance.learned else [SimpleLoss(), SimpleLoss(MinSNRWeighting())]
    for loss in losses:
        terms = loss(d, out, x0, xt, t, eps)
        assert "loss" in terms
        for key, value in terms.items():
            assert value.shape == (12,), (loss, key)
            assert torch.isfinite(value).all(), (loss, key)


@pytest.mark.parametrize("pred", PREDS)
def test_simple_loss_is_the_target_mse_and_zero_when_perfect(pred):
    s, x0, eps, t, xt, g = setup()
    d = Diffusion(s, pred)
    perfect = d.prediction.from_x0_eps(s, x0, eps, t)
    terms = SimpleLoss()(d, perfect, x0, xt, t, eps)
    assert terms["mse"].abs().max().item() == 0.0
    assert terms["loss"].abs().max().item() == 0.0
    # an imperfect output: the mean over dimensions of (target - output)², weighted
    noisy = perfect + 0.3 * torch.randn(perfect.shape, generator=g)
    terms = SimpleLoss(MinSNRWeighting(5.0))(d, noisy, x0, xt, t, eps)
    mse = ((perfect.double() - noisy.double()) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(terms["mse"].double(), mse, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(terms["loss"], MinSNRWeighting(5.0)(d, t) * terms["mse"])


def test_simple_loss_reads_only_the_mean_channels():
    s, x0, eps, t, xt, g = setup()
    d = Diffusion(s, "eps", "learned_range")
    out = torch.cat([eps, torch.randn(eps.shape, generator=g)], 1)
    assert SimpleLoss()(d, out, x0, xt, t, eps)["mse"].abs().max().item() == 0.0


@pytest.mark.parametrize("pred", PREDS)
def test_vlb_with_the_exact_posterior(pred):
    """A perfect x_0 prediction with the true posterior variance makes every KL term L_{t-1}, t >= 2 (index >=
    1) vanish; at index 0 the term is the decoder NLL of x_0 under N(x_0, beta~ of index 1) over its bin."""
    T = 100
    s, x0, eps, t, xt, _ = setup(T=T, centres=True)
    d = Diffusion(s, pred, "fixed_small")
    perfect = d.prediction.from_x0_eps(s, x0, eps, t)
    terms = VLBLoss()(d, perfect, x0, xt, t, eps)
    torch.testing.assert_close(terms["loss"], terms["vb"] * T)
    vb = terms["vb"].double()
    kl = vb[t >= 1]
    # float32 rounding of the predicted x_0 (amplified by 1/sqrt(abar) for ε) gives KLs of ~1e-9 bits
    assert kl.abs().max().item() < 1e-6
    # decoder: sd = sqrt(beta~_1 clipped); the bins of x_0 are interior or edge bins
    sd = math.sqrt(tables(s.betas.numpy())["post_var_clipped"][0])
    h = 1 / 255
    x = x0[t == 0].double().numpy()
    p = np.where(
        x < -1 + h, norm.cdf(h / sd), np.where(x > 1 - h, norm.cdf(h / sd), 2 * norm.cdf(h / sd) - 1)
    )
    expected = -np.log(p).reshape(p.shape[0], -1).mean(1) / LN2
    np.testing.assert_allclose(vb[t == 0].numpy(), expected, rtol=1e-3)  # tanh approximation of Φ


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range", "learned"])
@pytest.mark.parametrize("pred", PREDS)
def test_vb_terms_are_the_gaussian_kl(pred, variance):
    """For index >= 1 and an arbitrary output: KL(N(μ̃(x_0, x_t), beta~) || N(μ̃(x̂_0, x_t), σ²)) in bits, with
    x̂_0 read from the output by the paper's formulas and σ² by the variance's definition (all in float64)."""
    T = 50
    s, x0, eps, t, xt, g = setup(T=T, name="linear", seed=3)
    t = torch.randint(1, T, t.shape, generator=g)
    xt = q_sample(s, x0, t, eps)
    d = Diffusion(s, pred, variance)
    C = x0.shape[1]
    out = torch.randn(12, C * d.variance.out_channel_factor, 4, 4, generator=g) * 0.5
    vb = vb_terms_bpd(d, out, x0, xt, t).double().numpy()

    tb = tables(s.betas.numpy())
    ti = t.numpy()
    shape = (-1, 1, 1, 1)
    a, sg = np.sqrt(tb["abar"][ti]).reshape(shape), np.sqrt(1 - tb["abar"][ti]).reshape(shape)
    o = out[:, :C].double().numpy()
    x, xtn = x0.double().numpy(), xt.double().numpy()
    c1, c2 = tb["coef1"][ti].reshape(shape), tb["coef2"][ti].reshape(shape)
    mq = c1 * x + c2 * xtn
    if pred == "mean":  # the output is the step's mean itself
        mp = o
    else:
        x0_hat = {"eps": (xtn - sg * o) / a, "x0": o, "v": a * xtn - sg * o}[pred]
        mp = c1 * x0_hat + c2 * xtn
    vq = tb["post_var"][ti].reshape(shape)
    log_small, log_large = np.log(vq), np.log(tb["betas"][ti]).reshape(shape)
    if variance == "fixed_small":
        lvp = log_small
    elif variance == "fixed_large":
        lvp = log_large
    elif variance == "learned":
        lvp = out[:, C:].double().numpy()
    else:
        frac = (out[:, C:].double().numpy() + 1) / 2
        lvp = frac * log_large + (1 - frac) * log_small
    vp = np.exp(lvp)
    kl = 0.5 * (lvp - np.log(vq) + vq / vp - 1 + (mq - mp) ** 2 / vp)
    expected = kl.reshape(12, -1).mean(1) / LN2
    np.testing.assert_allclose(vb, expected, rtol=2e-4, atol=1e-6)


def test_hybrid_bound_trains_only_the_variance():
    s, x0, eps, t, xt, g = setup()
    d = Diffusion(s, "eps", "learned_range")
    C = x0.shape[1]
    out = torch.randn(12, 2 * C, 4, 4, generator=g).requires_grad_(True)
    loss = HybridLoss(vlb_weight=0.001)
    terms = loss(d, out, x0, xt, t, eps)
    simple = SimpleLoss()(d, out, x0, xt, t, eps)
    torch.testing.assert_close(terms["loss"], simple["loss"] + 0.001 * d.num_timesteps * terms["vb"])
    torch.testing.assert_close(terms["vb"], vb_terms_bpd(d, out, x0, xt, t))

    (grad_vb,) = torch.autograd.grad(terms["vb"].sum(), out, retain_graph=True)
    assert torch.all(grad_vb[:, :C] == 0)  # stop-gradient on the mean
    assert grad_vb[:, C:].abs().min() > 0  # every variance output gets a gradient
    # the total's mean-channel gradient is exactly the simple loss's
    (grad_loss,) = torch.autograd.grad(terms["loss"].sum(), out)
    (grad_simple,) = torch.autograd.grad(simple["loss"].sum(), out)
    torch.testing.assert_close(grad_loss[:, :C], grad_simple[:, :C])
    assert torch.all(grad_simple[:, C:] == 0)
    # whereas the plain bound trains both
    out2 = out.detach().clone().requires_grad_(True)
    (grad_full,) = torch.autograd.grad(VLBLoss()(d, out2, x0, xt, t, eps)["loss"].sum(), out2)
    assert grad_full[:, :C].abs().sum() > 0 and grad_full[:, C:].abs().sum() > 0


def test_check_compatible():
    fixed = Diffusion(build_schedule("linear", 10), "eps", "fixed_small")
    learned = Diffusion(build_schedule("linear", 10), "eps", "learned_range")
    with pytest.raises(ValueError, match=r"loss=hybrid needs a learned variance but variance=fixed_small"):
        check_compatible(HybridLoss(), fixed)
    with pytest.raises(
        ValueError, match=r"loss=simple gives the variance no gradient but variance=learned_range"
    ):
        check_compatible(SimpleLoss(), learned)
    # the pairs that can train
    check_compatible(SimpleLoss(), fixed)
    check_compatible(VLBLoss(), fixed)
    check_compatible(VLBLoss(), learned)
    check_compatible(HybridLoss(), learned)


def test_build_loss():
    assert sorted(LOSSES) == ["edm", "flow", "hybrid", "restoration", "simple", "vlb"]
    assert isinstance(build_loss("hybrid", vlb_weight=0.01), HybridLoss)
    assert build_loss("hybrid", vlb_weight=0.01).vlb_weight == 0.01
    with pytest.raises(
        ValueError,
        match=r"loss='l1' is unknown; choose one of \[.edm., .flow., .hybrid., .restoration., .simple., .vlb.\]",
    ):
        build_loss("l1")
