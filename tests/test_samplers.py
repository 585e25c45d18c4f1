"""Samplers driven by the exact denoiser of Gaussian data, whose output distribution is known in closed form,
and the samplers' mechanics: trajectories, determinism, network evaluations, DDIM(η=1) = DDPM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion_lab.diffusion import Diffusion, build_schedule, parse_respacing
from diffusion_lab.samplers import SAMPLERS, DDIMSampler, DDPMSampler, build_sampler
from gaussian_oracle import GaussianDenoiser, posterior_stats, sampler_moments, tables, tables_from_abar

PREDS = ["eps", "x0", "v"]
MU, S = 0.3, 0.5  # data N(0.3, 0.5²): the samplers run with clip_denoised=False, the data is not in [-1, 1]
Z = 5.0  # standard errors: a correct implementation fails one check with probability ~6e-7
SHAPE = (12_500, 2, 2, 2)  # 100k iid values (the exact denoiser acts elementwise); 2 channels to split


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors on a shared 2-core CPU


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
    (
        "ddpm-all-linear",
        "linear",
        200,
        "fixed_small",
        None,
        lambda: DDPMSampler(None, False),
        "ddpm",
        0,
        0.08,
    ),
    (
        "ddpm-all-cosine",
        "cosine",
        200,
        "fixed_small",
        None,
        lambda: DDPMSampler(None, False),
        "ddpm",
        0,
        0.05,
    ),
    # beta as the variance overshoots slightly (+1.5%)
    ("ddpm-all-large", "linear", 200, "fixed_large", None, lambda: DDPMSampler(None, False), "ddpm", 0, 0.03),
    # learned_range with zero channels: the geometric mean of beta and beta~
    (
        "ddpm-all-range0",
        "linear",
        200,
        "learned_range",
        "zeros",
        lambda: DDPMSampler(None, False),
        "ddpm",
        0,
        0.05,
    ),
    # the exact reverse variance: only the missing noise of the last step, Var(x_0|x_1) (0.2%), remains
    ("ddpm-all-exact", "cosine", 200, "learned", "exact", lambda: DDPMSampler(None, False), "ddpm", 0, 0.005),
    # respaced to 50 steps: bigger steps, larger deficit of beta~ (-21% linear, -13% cosine)
    (
        "ddpm-ddim50",
        "linear",
        200,
        "fixed_small",
        None,
        lambda: DDPMSampler("ddim50", False),
        "ddpm",
        0,
        0.25,
    ),
    ("ddpm-50", "cosine", 200, "fixed_small", None, lambda: DDPMSampler(50, False), "ddpm", 0, 0.15),
    # DDIM on 50 steps: η = 0 (deterministic, -10%/-6%), η = 1 (DDPM's variance on the respaced grid)
    (
        "ddim0-linear",
        "linear",
        200,
        "fixed_small",
        None,
        lambda: DDIMSampler(50, 0.0, False),
        "ddim",
        0.0,
        0.12,
    ),
    (
        "ddim0-cosine",
        "cosine",
        200,
        "fixed_small",
        None,
        lambda: DDIMSampler(50, 0.0, False),
        "ddim",
        0.0,
        0.08,
    ),
    (
        "ddim1-cosine",
        "cosine",
        200,
        "fixed_small",
        None,
        lambda: DDIMSampler(50, 1.0, False),
        "ddim",
        1.0,
        0.15,
    ),
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
def test_exact_denoiser_recovers_gaussian_data(
    pred, schedule, T, variance, channels, make_sampler, kind, eta, bias
):
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


# --------------------------------------------------------------------------------------------- mechanics
def small_setup(T=100, pred="eps", variance="fixed_small", schedule="linear"):
    s = build_schedule(schedule, T)
    d = Diffusion(s, pred, variance)
    model = GaussianDenoiser(abar_of(s), MU, S, pred, "zeros" if d.variance.learned else None)
    return s, d, model


@pytest.mark.parametrize(
    "sampler",
    [
        DDPMSampler(),
        DDPMSampler("ddim10"),
        DDPMSampler("3,4"),
        DDIMSampler(10),
        DDIMSampler("ddim25", eta=0.5),
    ],
    ids=repr,
)
def test_trajectory_and_evaluations(sampler):
    T = 100
    _, d, model = small_setup(T)
    kept = list(range(T)) if sampler.steps is None else parse_respacing(T, sampler.steps)
    x, traj = sampler.sample(
        d, model, (4, 2, 3, 3), generator=torch.Generator().manual_seed(0), return_trajectory=True
    )
    n = len(kept)
    # one network evaluation per step, at the original timesteps, in decreasing order
    assert model.calls == n == sampler.num_evaluations(d)
    assert model.timesteps == kept[::-1]
    # one recorded state and x_0 prediction per step, labelled with the original timesteps
    assert traj.timesteps == kept[::-1]
    assert len(traj.xt) == len(traj.pred_x0) == n
    assert all(v.shape == (4, 2, 3, 3) for v in traj.xt + traj.pred_x0)
    assert torch.equal(traj.xt[-1], x)
    # clip_denoised is on by default: every x_0 prediction lies in [-1, 1]
    assert all(p.abs().max() <= 1.0 for p in traj.pred_x0)
    # no trajectory asked: just the samples
    assert isinstance(sampler.sample(d, model, (4, 2, 3, 3)), torch.Tensor)


@pytest.mark.parametrize("pred", PREDS)
def test_ddim_eta0_is_deterministic_given_the_noise(pred):
    _, d, model = small_setup(pred=pred)
    noise = torch.randn(8, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    sampler = DDIMSampler(20, eta=0.0)
    a = sampler.sample(d, model, noise.shape, noise=noise, generator=torch.Generator().manual_seed(1))
    b = sampler.sample(d, model, noise.shape, noise=noise, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    # ... while with η = 1 (and for DDPM) the generator matters
    stochastic = DDIMSampler(20, eta=1.0)
    c = stochastic.sample(d, model, noise.shape, noise=noise, generator=torch.Generator().manual_seed(1))
    e = stochastic.sample(d, model, noise.shape, noise=noise, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(c, e)
    # and a seeded generator reproduces a run
    f = stochastic.sample(d, model, noise.shape, noise=noise, generator=torch.Generator().manual_seed(1))
    assert torch.equal(c, f)


@pytest.mark.parametrize("pred", PREDS)
def test_ddim_eta1_all_steps_is_ddpm(pred):
    """On all T steps of a fixed_small process, DDIM's σ_t for η = 1 is sqrt(beta~_t) and its update equals
    DDPM's posterior-mean step with the same noise."""
    T = 100
    s, d, model = small_setup(T, pred=pred, schedule="cosine")
    ddpm, ddim = DDPMSampler(None, clip_denoised=False), DDIMSampler(None, eta=1.0, clip_denoised=False)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 2, 3, 3, generator=g)
    tb = tables(s.betas.numpy())
    for i in (T - 1, 60, 10, 1):
        t = torch.full((16,), i)
        out = d.p_mean_variance(model, x, t)
        noise = torch.randn(x.shape, generator=g)
        a = ddpm.step(d, out, x, t, i, noise)
        b = ddim.step(d, out, x, t, i, noise)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        # the noise enters with sqrt(beta~_t): the difference of two noises isolates σ
        other = torch.randn(x.shape, generator=g)
        sigma = (ddim.step(d, out, x, t, i, other) - b) / (other - noise)
        torch.testing.assert_close(
            sigma, torch.full_like(sigma, math.sqrt(tb["post_var"][i])), rtol=1e-3, atol=0
        )
    # the last step adds no noise in both
    t0 = torch.zeros(16, dtype=torch.long)
    out = d.p_mean_variance(model, x, t0)
    torch.testing.assert_close(ddpm.step(d, out, x, t0, 0, None), out.mean)
    torch.testing.assert_close(ddim.step(d, out, x, t0, 0, None), out.mean, rtol=1e-5, atol=1e-5)
    # whole runs with the same generator stream agree
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    xa = ddpm.sample(d, model, (16, 2, 3, 3), generator=gen())
    xb = ddim.sample(d, model, (16, 2, 3, 3), generator=gen())
    torch.testing.assert_close(xa, xb, rtol=1e-4, atol=1e-4)


def test_step_formulas():
    """DDPM: x = μ_θ + σ z. DDIM(η): x = sqrt(abar_prev) x̂_0 + sqrt(1 - abar_prev - σ²) ε̂ + σ z with
    σ = η sqrt((1 - abar_prev)/(1 - abar)) sqrt(1 - abar/abar_prev) (Song et al. eq. 16)."""
    T = 50
    s, d, model = small_setup(T, pred="v", variance="fixed_large")
    tb = tables(s.betas.numpy())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 2, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    i = 20
    t = torch.full((6,), i)
    out = d.p_mean_variance(model, x, t)
    torch.testing.assert_close(
        DDPMSampler().step(d, out, x, t, i, noise),
        out.mean + math.sqrt(tb["betas"][i]) * noise,
        rtol=1e-6,
        atol=1e-6,
    )
    ab, ap = tb["abar"][i], tb["abar_prev"][i]
    eta = 0.5
    sigma = eta * math.sqrt((1 - ap) / (1 - ab) * (1 - ab / ap))
    expected = math.sqrt(ap) * out.pred_x0 + math.sqrt(1 - ap - sigma**2) * out.pred_eps + sigma * noise
    torch.testing.assert_close(
        DDIMSampler(eta=eta).step(d, out, x, t, i, noise), expected, rtol=1e-6, atol=1e-6
    )


def test_respaced_sampler_calls_the_network_with_original_timesteps():
    _, d, model = small_setup(1000)
    DDIMSampler("ddim50").sample(d, model, (2, 2, 1, 1))
    assert model.timesteps == list(range(980, -1, -20))


def test_sampler_registry_and_errors():
    assert sorted(SAMPLERS) == [
        "cold_improved",
        "cold_naive",
        "ddim",
        "ddpm",
        "dpmpp2m",
        "edm_euler",
        "edm_heun",
        "edm_stochastic",
        "euler",
        "flow_euler",
        "flow_heun",
        "heun",
    ]
    s = build_sampler("ddim", steps=20, eta=0.3)
    assert isinstance(s, DDIMSampler) and s.steps == 20 and s.eta == 0.3
    assert isinstance(build_sampler("ddpm", steps="ddim50"), DDPMSampler)
    with pytest.raises(
        ValueError, match=r"sampler='plms' is unknown; choose one of \['cold_improved', 'cold_naive', 'ddim'"
    ):
        build_sampler("plms")
    with pytest.raises(ValueError, match=r"sampler\.eta=-0\.1 is invalid"):
        DDIMSampler(eta=-0.1)
    _, d, model = small_setup(30)
    with pytest.raises(ValueError, match=r"sampler\.steps=50 is invalid"):
        DDIMSampler(50).sample(d, model, (2, 2, 1, 1))
    with pytest.raises(ValueError, match=r"outputs 2 channels but variance=learned_range needs 4"):
        DDPMSampler().sample(
            Diffusion(build_schedule("linear", 30), "eps", "learned_range"), model, (2, 2, 1, 1)
        )


# ------------------------------------------------------------------ respacing as improved-diffusion's
def iddpm_space_timesteps(num_timesteps: int, section_counts) -> set[int]:
    """improved-diffusion's ``space_timesteps``, written out from its algorithm: a float stride accumulated step
    by step and rounded with Python's (banker's) ``round``; "ddimN": the smallest integer stride giving N."""
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        desired = int(section_counts[len("ddim") :])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return set(range(0, num_timesteps, stride))
        raise ValueError(f"no integer stride gives {desired} steps")
    size_per, extra = num_timesteps // len(section_counts), num_timesteps % len(section_counts)
    start_idx, taken = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        frac_stride = (size - 1) / (count - 1) if count > 1 else 1
        cur_idx = 0.0
        for _ in range(count):
            taken.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(taken)


def test_section_counts_tie_as_improved_diffusion():
    kept = parse_respacing(1000, "10,31,41")
    assert kept == sorted(iddpm_space_timesteps(1000, [10, 31, 41]))
    assert {791, 958} <= set(kept) and not {792, 957} & set(kept)  # exact .5 ties of the accumulated stride


@settings(max_examples=400, deadline=None, derandomize=True, database=None)  # fixed examples, no .hypothesis/
@given(T=st.integers(1, 4000), data=st.data())
def test_respacing_is_improved_diffusions_space_timesteps(T, data):
    sections = data.draw(st.integers(1, min(T, 6)))
    size = T // sections  # the smallest section
    counts = data.draw(st.lists(st.integers(1, size), min_size=sections, max_size=sections))
    spec = ",".join(map(str, counts))
    assert parse_respacing(T, spec) == sorted(iddpm_space_timesteps(T, counts))
    n = data.draw(st.integers(1, T))  # a plain N is one section of N steps
    assert parse_respacing(T, n) == parse_respacing(T, str(n)) == sorted(iddpm_space_timesteps(T, [n]))
    ddim = f"ddim{n}"
    try:
        expected = sorted(iddpm_space_timesteps(T, ddim))
    except ValueError:  # no integer stride gives N steps: improved-diffusion refuses, the DDIM stride T // N
        expected = list(range(0, T, T // n))[:n]
    assert parse_respacing(T, ddim) == expected


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_step_is_float64_exact_at_every_step(schedule, eta, clip):
    """One DDIM(η) step at every t against float64 numpy from the betas alone, to 1e-6 relative: the first steps'
    1 - ᾱ must not be taken from a float32 ᾱ."""
    T, D = 1000, 16
    sched = build_schedule(schedule, T)
    abar = np.cumprod(1.0 - sched.betas.numpy())
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    gen = torch.Generator().manual_seed(0)
    x, eps_out, z = (torch.randn(T, D, generator=gen) for _ in range(3))
    t = torch.arange(T)
    out = Diffusion(sched, "eps").denoise(eps_out, x, t, clip_denoised=clip)
    got = DDIMSampler(eta=eta).step(Diffusion(sched, "eps"), out, x, t, 0, z).double().numpy()

    a, s = np.sqrt(abar)[:, None], np.sqrt(1.0 - abar)[:, None]
    x64, eps64, z64 = (v.double().numpy() for v in (x, eps_out, z))
    x0 = (x64 - s * eps64) / a
    if clip:
        x0 = np.clip(x0, -1.0, 1.0)
        eps64 = (x64 - a * x0) / s
    sigma = eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))[:, None]
    expected = (
        np.sqrt(abar_prev)[:, None] * x0 + np.sqrt(1.0 - abar_prev[:, None] - sigma**2) * eps64 + sigma * z64
    )
    scale = np.abs(expected).max(axis=1, keepdims=True)  # per step: a single element may cancel to ~0
    rel = (np.abs(got - expected) / scale).max(axis=1)
    assert rel.max() <= 1e-6, f"t={int(rel.argmax())}: relative error {rel.max():.2e}"
