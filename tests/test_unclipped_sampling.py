"""Sampling without clipping x̂_0 (every latent model): an ε-network on a schedule whose last ᾱ is tiny has
its error multiplied by hundreds at the first steps, a v-network's passes through about once. Measured with the
exact denoiser of Gaussian data plus a known bias, against the same sampler driven by the exact one; and the
warning a latent run gets for that combination."""

from __future__ import annotations

import warnings

import pytest
import torch

from diffusion_lab.diffusion import Diffusion, build_schedule
from diffusion_lab.latent.decoder import unclipped_eps_problem, warn_unclipped_eps
from diffusion_lab.samplers import DDIMSampler
from gaussian_oracle import GaussianDenoiser, tables

MU, S, BIAS = 0.3, 0.5, 1e-3

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors on a shared 2-core CPU


class BiasedDenoiser(GaussianDenoiser):
    """The exact denoiser with ``bias`` added to whatever it predicts (ε, x0 or v)."""

    def __init__(self, *args, bias: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.bias = bias

    def __call__(self, xt, t):
        return super().__call__(xt, t) + self.bias


def error_gain(schedule: str, prediction: str, steps: int, clip: bool = False) -> float:
    """max |x(biased network) - x(exact network)| / bias over 64 samples of DDIM η=0, x̂_0 unclipped unless
    ``clip``."""
    s = build_schedule(schedule, 1000)
    abar = tables(s.betas.numpy())["abar"]
    diffusion = Diffusion(s, prediction, "fixed_small")
    noise = torch.randn(64, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    sampler = DDIMSampler(steps, 0.0, clip_denoised=clip)
    exact, biased = (
        sampler.sample(diffusion, BiasedDenoiser(abar, MU, S, prediction, bias=b), noise.shape, noise=noise)
        for b in (0.0, BIAS)
    )
    return float((biased - exact).abs().max() / BIAS)


@pytest.mark.parametrize("steps", [10, 50])
def test_eps_on_the_cosine_schedule_amplifies_the_network_error_by_hundreds(steps):
    assert error_gain("cosine", "eps", steps) > 100


@pytest.mark.parametrize(("steps", "least"), [(10, 50), (50, 10)])
def test_clipping_only_tempers_it_most_at_few_steps(steps, least):
    """On pixels x̂_0 is clipped to [-1, 1]: the gain of ε on the cosine schedule falls but stays far above ε on
    the linear schedule's, the more so the fewer the steps (a mechanism for ε-cosine trailing ε-linear in the
    formulations study, most at 10 evaluations)."""
    cosine = error_gain("cosine", "eps", steps, clip=True)
    assert least < cosine < error_gain("cosine", "eps", steps)
    assert cosine > 5 * error_gain("linear", "eps", steps, clip=True)


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize(("schedule", "prediction"), [("cosine", "v"), ("linear", "v"), ("linear", "eps")])
def test_v_prediction_or_the_linear_schedule_keeps_the_error_small(schedule, prediction, steps):
    assert error_gain(schedule, prediction, steps) < 5


def test_the_problem_is_named_for_eps_on_cosine_only():
    cosine, linear = build_schedule("cosine", 1000), build_schedule("linear", 1000)
    assert unclipped_eps_problem(Diffusion(cosine, "v", "fixed_small")) is None
    assert unclipped_eps_problem(Diffusion(linear, "eps", "fixed_small")) is None
    assert unclipped_eps_problem(Diffusion(cosine, "eps", "fixed_small")) == (
        "prediction=eps on a schedule whose last ᾱ is 2.4e-09: without clipping (latents) the first sampling "
        "steps multiply ε̂'s error by up to 1/√ᾱ = 2.03e+04; use prediction=v, or a schedule whose last ᾱ is at "
        "least 1e-06 (schedule=linear over 1000 steps: 4e-05)"
    )
    # The hint names the linear schedule's last ᾱ at the run's own number of steps (Ho et al.'s betas, rescaled
    # by 1000/T as Nichol & Dhariwal do, end near 2e-05 at T = 100).
    assert unclipped_eps_problem(Diffusion(build_schedule("cosine", 100), "eps", "fixed_small")).endswith(
        "(schedule=linear over 100 steps: 2e-05)"
    )


def test_a_latent_run_with_eps_on_cosine_is_warned():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_unclipped_eps(Diffusion(build_schedule("cosine", 1000), "eps", "fixed_small"))
        warn_unclipped_eps(Diffusion(build_schedule("cosine", 1000), "v", "fixed_small"))
    assert [str(w.message).split(":")[0] for w in caught] == [
        "prediction=eps on a schedule whose last ᾱ is 2.4e-09"
    ]
