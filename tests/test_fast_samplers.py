"""The probability-flow ODE samplers (Euler, Heun, DPM-Solver++(2M)) driven by the exact denoiser of Gaussian
data, whose PF-ODE has a closed-form solution, and their mechanics: evaluations, trajectories, registry, CLI.

For x_0 ~ N(mu, s²) per dimension the PF-ODE in y = x/α, σ̄ = σ/α reads dy/dσ̄ = σ̄ (y - mu) / (s² + σ̄²), so
y(σ̄) - mu ∝ sqrt(s² + σ̄²): the ODE maps x at a step with alpha-bar ᾱ to

    x_0 = mu + s (x - sqrt(ᾱ) mu) / sqrt(ᾱ s² + 1 - ᾱ)

exactly (this depends only on the start, not on the path of the schedule).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion_lab.diffusion import Diffusion, build_schedule, parse_respacing
from diffusion_lab.errors import UserError
from diffusion_lab.samplers import (
    SAMPLERS,
    DDIMSampler,
    DPMSolverPPSampler,
    EulerSampler,
    HeunSampler,
    build_sampler,
)
from gaussian_oracle import GaussianDenoiser, tables

PREDS = ["eps", "x0", "v", "mean"]
MU, S = 0.3, 0.5
T = 1000
Z = 5.0


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors on a shared 2-core CPU


def abar_of(schedule) -> np.ndarray:
    return tables(schedule.betas.numpy())["abar"]


def pf_ode_solution(x: torch.Tensor, abar_start: float) -> torch.Tensor:
    """The exact PF-ODE image of x (at a step with alpha-bar ``abar_start``) for N(MU, S²) data, in float64."""
    a = math.sqrt(abar_start)
    return MU + S * (x.double() - a * MU) / math.sqrt(abar_start * S * S + 1 - abar_start)


def ode_error(sampler, schedule: str, pred: str, variance: str = "fixed_small") -> tuple[float, int]:
    """Max |sampler(x) - PF-ODE(x)| over a grid of starting values, and the network evaluations it took."""
    s = build_schedule(schedule, T)
    abar = abar_of(s)
    d = Diffusion(s, pred, variance)
    model = GaussianDenoiser(abar, MU, S, pred, "zeros" if d.variance.learned else None)
    x = torch.linspace(-3, 3, 62).reshape(-1, 2, 1, 1)  # (31, 2, 1, 1) float32
    out = sampler.sample(d, model, x.shape, noise=x)
    start = parse_respacing(T, sampler.steps)[-1]
    assert model.calls == sampler.num_evaluations(d)
    return (out.double() - pf_ode_solution(x, abar[start])).abs().max().item(), model.calls


# --------------------------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("pred", PREDS)
def test_second_order_samplers_beat_ddim_at_equal_evaluations(schedule, pred):
    """At 20 network evaluations DPM-Solver++(2M) and Heun land far closer to the PF-ODE solution than DDIM
    (a first-order solver of the same ODE); for every parameterization the error is the same (the samplers
    see the network only through x̂_0 / ε̂)."""
    ddim, n_ddim = ode_error(DDIMSampler(20, 0.0, clip_denoised=False), schedule, pred)
    dpm, n_dpm = ode_error(DPMSolverPPSampler(20, clip_denoised=False), schedule, pred)
    heun, n_heun = ode_error(HeunSampler(11, clip_denoised=False), schedule, pred)
    assert n_ddim == n_dpm == n_heun == 20
    # measured: linear DDIM 0.21, DPM++ 0.071, Heun 0.105; cosine DDIM 0.12, DPM++ 0.005, Heun 0.03
    assert dpm < ddim / 2.5
    assert heun < ddim / 1.6
    # DDIM itself converges to the same solution (first order), which validates the reference
    assert ode_error(DDIMSampler(200, 0.0, clip_denoised=False), schedule, pred)[0] < ddim / 8


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_convergence_orders(schedule):
    """Doubling the steps halves DDIM's (= Euler's) error and quarters Heun's."""
    err = {
        (name, n): ode_error(make(n), schedule, "eps")[0]
        for name, make in (
            ("euler", lambda n: EulerSampler(n, clip_denoised=False)),
            ("heun", lambda n: HeunSampler(n, clip_denoised=False)),
        )
        for n in (20, 40)
    }
    assert 1.7 < err["euler", 20] / err["euler", 40] < 2.3
    assert err["heun", 20] / err["heun", 40] > 3.3


def test_heun_without_euler_first_is_karras_algorithm_1():
    """``euler_first=False`` corrects every step but the last (2n - 1 evaluations): fine on the linear
    schedule (σ̄_max ≈ 157), badly off on the cosine one (σ̄_max ≈ 2·10⁴) — why the default skips it."""
    linear_k, n_k = ode_error(HeunSampler(10, euler_first=False, clip_denoised=False), "linear", "eps")
    linear, n = ode_error(HeunSampler(10, clip_denoised=False), "linear", "eps")
    assert (n_k, n) == (19, 18)
    assert abs(linear_k - linear) < 0.01
    assert ode_error(HeunSampler(10, euler_first=False, clip_denoised=False), "cosine", "eps")[0] > 1.0
    assert ode_error(HeunSampler(10, clip_denoised=False), "cosine", "eps")[0] < 0.1


def test_lower_order_final():
    """The step into t_0 = 0 (a large log-SNR jump) is better taken first order."""
    with_lof = ode_error(DPMSolverPPSampler(20, clip_denoised=False), "linear", "eps")[0]
    without = ode_error(
        DPMSolverPPSampler(20, lower_order_final=False, clip_denoised=False), "linear", "eps"
    )[0]
    assert with_lof < without / 3


@pytest.mark.parametrize("pred", PREDS)
def test_euler_is_ddim_eta0_and_short_dpm_is_ddim(pred):
    """Euler in σ̄-space is DDIM(η = 0) step for step; DPM-Solver++ with at most 3 steps takes only first-order
    steps (the first, the lower-order final one and the denoising one), which are DDIM's."""
    s = build_schedule("cosine", 100)
    d = Diffusion(s, pred)
    model = GaussianDenoiser(abar_of(s), MU, S, pred)
    noise = torch.randn(8, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    for steps in (20, "ddim10", "3,4"):
        ref = DDIMSampler(steps, 0.0).sample(d, model, noise.shape, noise=noise)
        euler = EulerSampler(steps).sample(d, model, noise.shape, noise=noise)
        torch.testing.assert_close(euler, ref, rtol=1e-4, atol=1e-4)
    for steps in (1, 2, 3):
        ref = DDIMSampler(steps, 0.0, clip_denoised=False).sample(d, model, noise.shape, noise=noise)
        dpm = DPMSolverPPSampler(steps, clip_denoised=False).sample(d, model, noise.shape, noise=noise)
        torch.testing.assert_close(dpm, ref, rtol=1e-5, atol=1e-5)
    # with a second-order step among them, it differs
    ref = DDIMSampler(3, 0.0, clip_denoised=False).sample(d, model, noise.shape, noise=noise)
    dpm = DPMSolverPPSampler(3, lower_order_final=False, clip_denoised=False)
    assert not torch.allclose(dpm.sample(d, model, noise.shape, noise=noise), ref, atol=1e-3)


# --------------------------------------------------------------------------------------------- distribution
SHAPE = (12_500, 2, 2, 2)


@pytest.mark.parametrize(
    ("make", "schedule", "variance", "bias"),
    # bias: bound on |A - A_ode| / A_ode of this configuration (measured -3.8%, +0.1%, +2.1%, +2.1%, -3.0%;
    # DDIM at 20 steps: -13% linear, -7.6% cosine)
    [
        (lambda: DPMSolverPPSampler(20, clip_denoised=False), "linear", "fixed_small", 0.05),
        (lambda: DPMSolverPPSampler("ddim25", clip_denoised=False), "cosine", "learned_range", 0.005),
        (lambda: HeunSampler(11, clip_denoised=False), "cosine", "fixed_small", 0.03),
        (lambda: HeunSampler("10,10", clip_denoised=False), "linear", "learned", 0.03),
        (lambda: EulerSampler(50, clip_denoised=False), "cosine", "fixed_large", 0.04),
    ],
    ids=[
        "dpm20-linear",
        "dpm-ddim25-cosine-learned",
        "heun11-cosine",
        "heun-sections-linear-learned",
        "euler50",
    ],
)
@pytest.mark.parametrize("pred", PREDS)
def test_exact_denoiser_recovers_gaussian_data(make, schedule, variance, bias, pred):
    """A deterministic sampler driven by the exact denoiser is an affine map x -> A x + b per value, so its
    samples from N(0, 1) are N(b, A²) exactly; A and b are read off two runs, and sit within the stated
    discretization bias of the PF-ODE's map, which transports N(0, 1) to the data N(MU, S²) (up to ᾱ_T)."""
    s = build_schedule(schedule, 200)
    d = Diffusion(s, pred, variance)
    abar = abar_of(s)
    model = GaussianDenoiser(abar, MU, S, pred, "zeros" if d.variance.learned else None)
    sampler = make()
    x = sampler.sample(d, model, SHAPE, generator=torch.Generator().manual_seed(0))
    assert x.shape == SHAPE and x.dtype == torch.float32
    b = sampler.sample(d, model, (1, 2, 1, 1), noise=torch.zeros(1, 2, 1, 1)).double().mean().item()
    A = sampler.sample(d, model, (1, 2, 1, 1), noise=torch.ones(1, 2, 1, 1)).double().mean().item() - b
    v = x.double().flatten().numpy()
    assert abs(v.mean() - b) < Z * abs(A) / math.sqrt(v.size)
    assert abs(v.var() - A * A) < Z * A * A * math.sqrt(2 / v.size)
    # the PF-ODE map from the start of the grid
    a_T = abar[parse_respacing(200, sampler.steps)[-1]]
    A_ode = S / math.sqrt(a_T * S * S + 1 - a_T)
    assert abs(A - A_ode) / A_ode < bias
    assert abs(b - (MU - A_ode * math.sqrt(a_T) * MU)) < bias * S
    # and so the data: mean within 0.01, variance within the bias (ᾱ_T is tiny: 4e-5 linear, 0 cosine at T=200)
    assert abs(v.mean() - MU) < 0.01
    assert abs(v.var() - S * S) / (S * S) < 2 * bias + 0.01


# --------------------------------------------------------------------------------------------- mechanics
def small_setup(T=100, pred="eps", variance="fixed_small"):
    s = build_schedule("linear", T)
    d = Diffusion(s, pred, variance)
    model = GaussianDenoiser(abar_of(s), MU, S, pred, "zeros" if d.variance.learned else None)
    return d, model


@pytest.mark.parametrize(
    "sampler",
    [
        DPMSolverPPSampler(10),
        DPMSolverPPSampler("ddim10", lower_order_final=False),
        EulerSampler("3,4"),
        HeunSampler(7),
        HeunSampler("ddim5", euler_first=False),
        HeunSampler(1),
    ],
    ids=repr,
)
def test_trajectory_and_evaluations(sampler):
    T = 100
    d, model = small_setup(T, variance="learned_range")
    kept = parse_respacing(T, sampler.steps)
    shape = (4, 2, 3, 3)
    x, traj = sampler.sample(
        d, model, shape, generator=torch.Generator().manual_seed(0), return_trajectory=True
    )
    n = len(kept)
    assert model.calls == sampler.num_evaluations(d)
    if isinstance(sampler, HeunSampler):
        # an evaluation at each kept step, and a corrector at the next one for every step but the last (and
        # the first with euler_first): t_{n-1}, [t_{n-2}], t_{n-2}, t_{n-3}, t_{n-3}, ..., t_0, t_0
        expected = [kept[-1]]
        for j in range(n - 2, -1, -1):
            if not (sampler.euler_first and j == n - 2):
                expected.append(kept[j])
            expected.append(kept[j])
        assert model.timesteps == expected
        assert model.calls == (2 * n - 1 - (sampler.euler_first and n > 1))
    else:
        assert model.timesteps == kept[::-1] and model.calls == n
    # one recorded state and x_0 prediction per kept step, labelled with the original timesteps
    assert traj.timesteps == kept[::-1]
    assert len(traj.xt) == len(traj.pred_x0) == n
    assert all(v.shape == shape for v in traj.xt + traj.pred_x0)
    assert torch.equal(traj.xt[-1], x)
    assert all(p.abs().max() <= 1.0 for p in traj.pred_x0)  # clip_denoised by default
    # deterministic: the generator only draws the starting noise
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    a = sampler.sample(d, model, shape, noise=noise, generator=torch.Generator().manual_seed(2))
    b = sampler.sample(d, model, shape, noise=noise, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    c = sampler.sample(d, model, shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, c)


def test_learned_variance_channels_are_ignored():
    s = build_schedule("linear", 100)
    noise = torch.randn(4, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    plain = Diffusion(s, "v", "fixed_small")
    learned = Diffusion(s, "v", "learned_range")
    abar = abar_of(s)
    for sampler in (DPMSolverPPSampler(10), HeunSampler(6), EulerSampler(10)):
        a = sampler.sample(plain, GaussianDenoiser(abar, MU, S, "v"), noise.shape, noise=noise)
        b = sampler.sample(learned, GaussianDenoiser(abar, MU, S, "v", "exact"), noise.shape, noise=noise)
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------------------- independent
def _diffusers_run(scheduler, model, x, kept, ve_input: bool) -> torch.Tensor:
    scheduler.set_timesteps(timesteps=kept[::-1])
    sample = x.double() * (math.sqrt(float(scheduler.sigmas[0]) ** 2 + 1) if ve_input else 1.0)
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(sample, t) if ve_input else sample
        eps = model(inp, torch.full((x.shape[0],), int(t)))
        sample = scheduler.step(eps, t, sample).prev_sample
    return sample


@pytest.mark.parametrize("steps", [10, 20])
def test_matches_diffusers(steps):
    """Against diffusers' schedulers on the same timesteps (an independent implementation): DPM-Solver++(2M)
    with zero final sigma and lower_order_final=False, Heun (Karras Alg. 1) and Euler."""
    diffusers = pytest.importorskip("diffusers")
    s = build_schedule("linear", T)
    abar = abar_of(s)
    d = Diffusion(s, "eps")
    kept = parse_respacing(T, steps)
    x = torch.linspace(-3, 3, 12).reshape(6, 2, 1, 1).double()
    cases = [
        (
            DPMSolverPPSampler(steps, lower_order_final=False, clip_denoised=False),
            diffusers.DPMSolverMultistepScheduler(
                num_train_timesteps=T,
                trained_betas=s.betas.numpy(),
                algorithm_type="dpmsolver++",
                solver_order=2,
                final_sigmas_type="zero",
                lower_order_final=False,
            ),
            False,
        ),
        (
            HeunSampler(steps, euler_first=False, clip_denoised=False),
            diffusers.HeunDiscreteScheduler(num_train_timesteps=T, trained_betas=s.betas.numpy()),
            True,
        ),
        (
            EulerSampler(steps, clip_denoised=False),
            diffusers.EulerDiscreteScheduler(
                num_train_timesteps=T, trained_betas=s.betas.numpy(), final_sigmas_type="zero"
            ),
            True,
        ),
    ]
    for ours, scheduler, ve_input in cases:
        theirs = _diffusers_run(scheduler, GaussianDenoiser(abar, MU, S, "eps"), x, kept, ve_input)
        mine = ours.sample(d, GaussianDenoiser(abar, MU, S, "eps"), x.shape, noise=x)
        # diffusers keeps its sigmas in float32
        torch.testing.assert_close(mine.double(), theirs.double(), rtol=0, atol=1e-4, msg=repr(ours))


# --------------------------------------------------------------------------------------------- registry
def test_registry_configs_and_choose_sampler():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from diffusion_lab.sampling import choose_sampler
    from diffusion_lab.train import CONFIG_DIR

    assert {
        "dpmpp2m": DPMSolverPPSampler,
        "heun": HeunSampler,
        "euler": EulerSampler,
    }.items() <= SAMPLERS.items()
    for name, cls in (("dpmpp2m", DPMSolverPPSampler), ("heun", HeunSampler), ("euler", EulerSampler)):
        sampler = instantiate(OmegaConf.load(f"{CONFIG_DIR}/sampler/{name}.yaml"))
        assert type(sampler) is cls and sampler.name == name
        assert type(build_sampler(name, steps=7)) is cls
        stored = {
            "_target_": "diffusion_lab.samplers.DDIMSampler",
            "steps": 50,
            "eta": 0.0,
            "clip_denoised": True,
        }
        chosen = choose_sampler(stored, name, steps=12)
        assert type(chosen) is cls and chosen.steps == 12
        with pytest.raises(UserError, match=f"eta=0.5 applies to sampler=ddim only, not {name}"):
            choose_sampler(stored, name, eta=0.5)
        # a run trained with this sampler: sample.py rebuilds it from the stored config
        stored_cfg = OmegaConf.to_container(OmegaConf.load(f"{CONFIG_DIR}/sampler/{name}.yaml"))
        again = choose_sampler(stored_cfg, None, steps=5)
        assert type(again) is cls and again.steps == 5
    d, _ = small_setup(1000)
    assert DPMSolverPPSampler(20).num_evaluations(d) == 20
    assert EulerSampler("ddim25").num_evaluations(d) == 25
    assert HeunSampler(11).num_evaluations(d) == 20
    assert HeunSampler(11, euler_first=False).num_evaluations(d) == 21
    assert HeunSampler(1).num_evaluations(d) == 1
    with pytest.raises(ValueError, match=r"sampler\.steps=2000 is invalid"):
        DPMSolverPPSampler(2000).sample(d, GaussianDenoiser(abar_of(d.schedule), MU, S, "eps"), (1, 1))
