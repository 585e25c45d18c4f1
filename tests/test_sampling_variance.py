"""evaluate's sampling_variance: a fixed-variance checkpoint sampled with the other fixed variance (DDIM's σ̂
row), its σ_t² against the schedule recomputed here, and one-line refusals where nothing would read it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_lab.build import Parts
from diffusion_lab.diffusion.flow import FlowProcess
from diffusion_lab.diffusion.process import Diffusion
from diffusion_lab.errors import UserError
from diffusion_lab.samplers import DDIMSampler, DDPMSampler
from diffusion_lab.sampling_variance import with_sampling_variance
from gaussian_oracle import GaussianDenoiserNet

STEPS = 10


def parts_of(diffusion) -> Parts:
    return Parts(diffusion, net=None, loss=None, timesteps=None, sampler=None)


def step_variances(diffusion: Diffusion, steps: int) -> np.ndarray:
    """σ_t² of the process respaced to ``steps``, at every kept position, as its reverse step reads it."""
    process = diffusion.respaced(steps)
    t = torch.arange(steps)
    x = torch.zeros(steps, 1, 2, 2)
    return process.denoise(torch.zeros_like(x), x, t).log_variance.exp().flatten().double().numpy()


def kept_alphas_cumprod(diffusion: Diffusion, steps: int) -> np.ndarray:
    """ᾱ at the kept timesteps, from the betas by numpy's cumulative product (not the schedule's tables)."""
    abar = np.cumprod(1.0 - diffusion.schedule.betas.double().numpy())
    return abar[diffusion.respaced(steps).timestep_map.numpy()]


def test_fixed_large_is_the_respaced_beta_and_fixed_small_the_posterior_variance():
    trained = Diffusion.from_names("linear", 1000, "eps", "fixed_small")
    large = with_sampling_variance(parts_of(trained), "fixed_large", DDPMSampler(steps=STEPS)).diffusion
    abar = kept_alphas_cumprod(trained, STEPS)
    beta = 1.0 - abar[1:] / abar[:-1]  # the respaced β of positions 1 .. S-1
    small = beta * (1.0 - abar[:-1]) / (1.0 - abar[1:])  # β̃ there
    got_large, got_small = step_variances(large, STEPS), step_variances(trained, STEPS)
    np.testing.assert_allclose(got_large[1:], beta, rtol=1e-5)
    np.testing.assert_allclose(got_small[1:], small, rtol=1e-5)
    # position 0 takes β̃ of position 1 under both (the decoder's step: IDDPM's convention)
    assert got_large[0] == pytest.approx(small[0], rel=1e-5) and got_small[0] == pytest.approx(
        small[0], rel=1e-5
    )
    assert np.all(beta > small)  # the σ̂ row samples with the larger noise
    assert trained.variance.name == "fixed_small"  # the checkpoint's process is left as it was


def test_the_checkpoints_own_variance_changes_nothing():
    trained = Diffusion.from_names("cosine", 100, "v", "fixed_large")
    same = with_sampling_variance(parts_of(trained), "fixed_large", DDPMSampler(steps=STEPS)).diffusion
    np.testing.assert_array_equal(step_variances(same, STEPS), step_variances(trained, STEPS))
    assert with_sampling_variance(parts_of(trained), None, DDIMSampler(steps=STEPS)).diffusion is trained


@pytest.mark.parametrize(
    "process,name,sampler,message",
    [
        (
            Diffusion.from_names("linear", 100, "eps", "fixed_small"),
            "learned_range",
            DDPMSampler(),
            "sampling_variance=learned_range is unknown; choose one of fixed_small, fixed_large "
            "(or null: the checkpoint's own)",
        ),
        (
            Diffusion.from_names("linear", 100, "eps", "learned_range"),
            "fixed_large",
            DDPMSampler(),
            "sampling_variance=fixed_large replaces a fixed variance, and this checkpoint's network outputs its "
            "own (variance=learned_range); drop sampling_variance",
        ),
        (
            Diffusion.from_names("linear", 100, "eps", "fixed_small"),
            "fixed_large",
            DDIMSampler(eta=0.0),
            "sampling_variance=fixed_large is read by ancestral sampling alone, and sampler=ddim takes no "
            "variance from the process; use sampler=ddpm or drop sampling_variance",
        ),
        (
            FlowProcess(),
            "fixed_small",
            None,
            "sampling_variance=fixed_small applies to Gaussian diffusion (process=ddpm), and this checkpoint's "
            "process is flow; drop sampling_variance",
        ),
    ],
)
def test_refusals_are_one_line(process, name, sampler, message):
    with pytest.raises(UserError) as err:
        with_sampling_variance(parts_of(process), name, sampler)
    assert str(err.value) == message


def test_beta_is_the_exact_reverse_variance_for_unit_gaussian_data():
    """For x_0 ~ N(0, I) every marginal is N(0, I) and q(x_{t-1} | x_t) = N(sqrt(α_t) x_t, β_t): with the exact
    denoiser, ancestral sampling with σ_t² = β_t (fixed_large) returns unit variance on a respaced grid, and the
    posterior's β̃_t (fixed_small, the checkpoint's here) returns too little."""
    trained = Diffusion.from_names("linear", 1000, "eps", "fixed_small")
    oracle = GaussianDenoiserNet(trained.schedule.alphas_cumprod.numpy(), mu=0.0, s=1.0)
    variances = {}
    for name in ("fixed_small", "fixed_large"):
        sampler = DDPMSampler(steps=STEPS, clip_denoised=False)
        process = with_sampling_variance(parts_of(trained), name, sampler).diffusion
        gen = torch.Generator().manual_seed(0)
        x = sampler.sample(process, oracle, (4000, 1, 8, 8), generator=gen)
        variances[name] = x.double().var().item()
    # 256,000 values: the variance's standard error is about 0.003
    assert variances["fixed_large"] == pytest.approx(1.0, abs=0.015)
    assert variances["fixed_small"] < 0.9
