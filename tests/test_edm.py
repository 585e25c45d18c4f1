"""EDM (Karras et al. 2022) checked against the paper: Table 1's preconditionings and loss weighting, the
Karras σ grid, Algorithms 1 and 2 driven by the exact denoiser of Gaussian data, §2's equivalence of the VP
preconditioning with DDIM, the training distributions, and tiny training runs through the commands.

For x_0 ~ N(MU, S²) per dimension and x = x_0 + σn, the denoiser is D(x; σ) = MU + k(σ)(x − MU) with
k(σ) = S² / (S² + σ²), and the probability-flow ODE dx/dσ = (x − D)/σ keeps (x − MU)/sqrt(S² + σ²) constant: it
maps the start x = σ_max·z to MU + S(σ_max·z − MU)/sqrt(S² + σ_max²). ``EDMGaussianNet`` is the network F that
makes each preconditioning's D exactly this denoiser, so the samplers see the process's wiring (c_in·x, c_noise,
c_skip·x + c_out·F) and nothing else.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose_train
from diffusion_lab.build import load_checkpoint
from diffusion_lab.diffusion import (
    Diffusion,
    EDMLogNormalSampler,
    EDMLoss,
    EDMProcess,
    EDMWeighting,
    InverseSigmaSquaredWeighting,
    NoiseSchedule,
    VELogUniformSampler,
    VPUniformTimeSampler,
)
from diffusion_lab.diffusion.guidance import ClassifierFreeGuidance
from diffusion_lab.errors import UserError
from diffusion_lab.samplers import (
    DDIMSampler,
    EDMEulerSampler,
    EDMHeunSampler,
    EDMStochasticSampler,
    HeunSampler,
)
from diffusion_lab.samplers.edm import edm_sample, karras_sigmas
from diffusion_lab.score_names import NUM_BUCKETS, bucket_key
from gaussian_oracle import (
    VP_BETA_D,
    VP_BETA_MIN,
    EDMGaussianNet,
    edm_posterior_mean,
    table1_scalings,
    vp_sigma_of_time,
)
from tiny_runs import fast_dev_run, guided_samples, sample_checkpoint, train_conditional

MU, S = 0.3, 0.5
Z = 5.0
PRECONDS = ["edm", "vp", "ve"]
SIGMAS = np.geomspace(0.002, 80.0, 41)


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------- Table 1
@pytest.mark.parametrize("precond", PRECONDS)
def test_preconditionings_are_table_1(precond):
    sigma = torch.tensor(SIGMAS)
    got = EDMProcess(precond, sigma_data=0.5).precond.scalings(sigma)
    for name, value, ref in zip(
        ("c_skip", "c_out", "c_in", "c_noise"), got, table1_scalings(precond, SIGMAS)
    ):
        np.testing.assert_allclose(value.numpy(), ref, rtol=1e-12, atol=1e-12, err_msg=name)


def test_vp_c_noise_is_the_ddpm_timestep_index():
    """c_noise(σ(t)) = 999·t: the VP network is called with DDPM's timestep index (c_in·x is its x_t)."""
    t = torch.linspace(1e-3, 1.0, 50, dtype=torch.float64)
    sigma = torch.as_tensor(vp_sigma_of_time(t.numpy()))
    _, _, c_in, c_noise = EDMProcess("vp").precond.scalings(sigma)
    torch.testing.assert_close(c_noise, 999 * t, rtol=1e-10, atol=1e-9)
    abar = torch.exp(-0.5 * VP_BETA_D * t**2 - VP_BETA_MIN * t)
    torch.testing.assert_close(c_in, abar.sqrt(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_edm_weighting_gives_unit_effective_weight(sigma_data):
    """λ(σ)·c_out(σ)² = 1 (the network's own target F has unit weight at every σ): EDM's λ with its
    preconditioning, and λ = 1/σ² with Table 1's VP and VE ones."""
    sigma = torch.tensor(SIGMAS)
    edm = EDMProcess("edm", sigma_data=sigma_data)
    c_out = edm.precond.scalings(sigma)[1]
    lam = EDMWeighting()(edm, sigma)
    torch.testing.assert_close(
        lam, (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2, rtol=1e-14, atol=0
    )
    torch.testing.assert_close(lam * c_out**2, torch.ones_like(sigma), rtol=1e-12, atol=0)
    for precond in ("vp", "ve"):
        process = EDMProcess(precond)
        c_out = process.precond.scalings(sigma)[1]
        lam = InverseSigmaSquaredWeighting()(process, sigma)
        torch.testing.assert_close(lam * c_out**2, torch.ones_like(sigma), rtol=1e-12, atol=0)


@pytest.mark.parametrize("precond", PRECONDS)
def test_edm_loss_is_the_effective_training_target(precond):
    """Eq. 8: λ(σ)·|D_θ − x_0|² = λ(σ)·c_out(σ)²·|F_θ − (x_0 − c_skip·x)/c_out|²: with the unit-effective
    weighting of each preconditioning the loss is the plain MSE of F against its effective target."""
    g = torch.Generator().manual_seed(0)
    x0, noise, out = (torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    sigma = torch.tensor([0.002, 0.05, 0.5, 1.0, 10.0, 80.0], dtype=torch.float64)
    process = EDMProcess(precond)
    weighting = EDMWeighting() if precond == "edm" else InverseSigmaSquaredWeighting()
    x = process.corrupt(x0, sigma, noise)
    torch.testing.assert_close(x, x0 + sigma[:, None, None, None] * noise)
    terms = EDMLoss(weighting)(process, out, x0, x, sigma, noise)
    c_skip, c_out, _, _ = (torch.as_tensor(v)[:, None, None, None] for v in table1_scalings(precond, sigma))
    target = (x0 - c_skip * x) / c_out
    # the loss computes in float32 (the network's output is cast, as under mixed precision)
    torch.testing.assert_close(terms["loss"], (out - target).square().flatten(1).mean(1), rtol=1e-5, atol=0)
    torch.testing.assert_close(terms["mse"], (c_skip * x + c_out * out - x0).square().flatten(1).mean(1))


# --------------------------------------------------------------------------------------------- σ grid
def test_karras_sigmas_are_eq_5():
    sigmas = karras_sigmas(18, 0.002, 80.0, 7.0)
    i = np.arange(18)
    ref = (80.0 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    np.testing.assert_allclose(sigmas[:-1].numpy(), ref, rtol=1e-13)
    assert sigmas[0] == pytest.approx(80.0) and sigmas[17] == pytest.approx(0.002) and sigmas[-1] == 0.0


# --------------------------------------------------------------------------------------------- samplers
def ode_map(sigma_max: float) -> tuple[float, float]:
    """(A, b) of the exact PF-ODE from x = σ_max·z to σ = 0: x_0 = A z + b."""
    r = math.sqrt(S * S + sigma_max * sigma_max)
    return S * sigma_max / r, MU - S * MU / r


def affine_map(sampler, precond: str = "edm") -> tuple[float, float, int]:
    """A deterministic sampler driven by the exact denoiser maps z -> A z + b: (A, b, network evaluations)."""
    net = EDMGaussianNet(precond, MU, S)
    z = torch.tensor([[0.0], [1.0]])
    out = sampler.sample(EDMProcess(precond), net, z.shape, noise=z).double().flatten()
    return float(out[1] - out[0]), float(out[0]), net.calls


@pytest.mark.parametrize("precond", PRECONDS)
def test_heun_with_the_exact_denoiser_recovers_gaussian_data(precond):
    """Algorithm 1 at 18 steps (35 evaluations) lands within 6% of the ODE's map (measured +5.5%, the same for
    every preconditioning: they differ only in how D is assembled) and the samples have the data's moments."""
    sampler = EDMHeunSampler(18)
    A, b, calls = affine_map(sampler, precond)
    assert calls == sampler.num_evaluations() == 35
    A_ode, b_ode = ode_map(80.0)
    assert abs(A - A_ode) / A_ode < 0.06
    assert abs(b - b_ode) < 2e-4
    x = sampler.sample(EDMProcess(precond), EDMGaussianNet(precond, MU, S), (20_000, 2), generator=gen(0))
    v = x.double().flatten().numpy()
    assert abs(v.mean() - b) < Z * abs(A) / math.sqrt(v.size)
    assert abs(v.var() - A * A) < Z * A * A * math.sqrt(2 / v.size)
    assert abs(v.mean() - MU) < 0.01 and abs(math.sqrt(v.var()) - S) / S < 0.07


def test_heun_is_second_order_and_euler_first():
    """Doubling the steps quarters Heun's error and halves Euler's (measured 4.5x and 2.0x at 18 -> 36)."""
    A_ode, _ = ode_map(80.0)
    err = {
        (cls.name, n): abs(affine_map(cls(n))[0] - A_ode)
        for cls in (EDMEulerSampler, EDMHeunSampler)
        for n in (18, 36)
    }
    assert err["edm_heun", 18] / err["edm_heun", 36] > 3.5
    assert 1.8 < err["edm_euler", 18] / err["edm_euler", 36] < 2.2
    assert err["edm_heun", 18] < err["edm_euler", 36]  # 35 evaluations of Heun beat 36 of Euler


def moment_recursion(
    sigmas, churn=0.0, tmin=0.0, tmax=math.inf, s_noise=1.0, second_order=True
) -> tuple[float, float]:
    """Mean and variance of Algorithm 2's output from z ~ N(0, 1), with the exact denoiser, line by line from the
    paper: every line is affine in x (plus independent noise), so (m, V) propagate exactly."""
    n = len(sigmas) - 1
    m, V = 0.0, float(sigmas[0]) ** 2  # x_0 = σ_0·z
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = min(churn / n, math.sqrt(2) - 1) if tmin <= s <= tmax else 0.0
        s_hat = s + gamma * s
        V += (s_hat**2 - s**2) * s_noise**2  # x̂ = x + sqrt(σ̂² − σ²)·S_noise·z
        k_hat = S * S / (S * S + s_hat**2)
        # d = (x̂ − D(x̂; σ̂))/σ̂ = (1 − k̂)(x̂ − MU)/σ̂;  x' = x̂ + (σ' − σ̂)·d
        e = (1 - k_hat) / s_hat
        a_euler = 1 + (s_next - s_hat) * e  # x' − MU = a (x̂ − MU) + MU-terms: track x − MU
        a = a_euler
        if second_order and s_next > 0:
            k_next = S * S / (S * S + s_next**2)
            e_next = (1 - k_next) / s_next  # d' = e'·(x' − MU)
            a = 1 + (s_next - s_hat) * 0.5 * (e + e_next * a_euler)
        # in y = x − MU every step is y' = a·y, so with m = E[x]: m' − MU = a (m − MU)
        m, V = MU + a * (m - MU), a * a * V
    return m, V


def test_the_moment_recursion_matches_the_deterministic_sampler():
    """The recursion (written from the paper's lines) and the sampler agree exactly for Algorithm 1, so the
    recursion can judge Algorithm 2."""
    sampler = EDMHeunSampler(12)
    A, b, _ = affine_map(sampler)
    m, V = moment_recursion(sampler.sigmas())
    assert m == pytest.approx(b, abs=1e-6) and math.sqrt(V) == pytest.approx(A, rel=1e-6)


@pytest.mark.parametrize(
    "settings",
    [
        dict(S_churn=40.0, S_tmin=0.05, S_tmax=50.0, S_noise=1.003),  # the paper's ImageNet-64 values
        dict(S_churn=80.0, S_tmin=0.0, S_tmax=math.inf, S_noise=1.0),  # γ = √2 − 1 at every step
    ],
    ids=["imagenet", "full-churn"],
)
def test_stochastic_sampler_recovers_gaussian_data(settings):
    """Algorithm 2 driven by the exact denoiser: the samples' mean and variance are the recursion's (within
    sampling error), and at 128 steps those are the data's within 1.5% in the standard deviation (measured +1.1%
    and +0.9%). The churn adds an error that decays like 1/steps (+5.4% and +5.0% at 32 steps, +0.5% and +0.4% at
    256), where Heun alone is off by +1.6% at 32 steps and +0.09% at 128: why Karras et al. run it with many steps."""
    sampler = EDMStochasticSampler(128, **settings)
    net = EDMGaussianNet("edm", MU, S)
    x = sampler.sample(EDMProcess("edm"), net, (20_000, 2), generator=gen(1))
    assert net.calls == sampler.num_evaluations() == 255
    v = x.double().flatten().numpy()
    m, V = moment_recursion(
        sampler.sigmas(), settings["S_churn"], settings["S_tmin"], settings["S_tmax"], settings["S_noise"]
    )
    assert abs(v.mean() - m) < Z * math.sqrt(V / v.size)
    assert abs(v.var() - V) < Z * V * math.sqrt(2 / v.size)
    assert abs(m - MU) < 0.005 and abs(math.sqrt(V) - S) / S < 0.015
    short = moment_recursion(
        karras_sigmas(32), *(settings[k] for k in ("S_churn", "S_tmin", "S_tmax", "S_noise"))
    )
    assert 0.04 < math.sqrt(short[1]) / S - 1 < 0.06


def test_algorithm_2_without_churn_is_algorithm_1():
    z = torch.randn(64, 3, generator=gen(2))
    net = EDMGaussianNet("edm", MU, S)
    heun = EDMHeunSampler(10).sample(EDMProcess(), net, z.shape, noise=z)
    stochastic = EDMStochasticSampler(10, S_churn=0.0).sample(
        EDMProcess(), net, z.shape, noise=z, generator=gen(3)
    )
    torch.testing.assert_close(stochastic, heun, rtol=0, atol=0)


def test_trajectory_records_each_sigma_and_denoised():
    sampler = EDMHeunSampler(6)
    z = torch.randn(4, 2, generator=gen(4))
    x, traj = sampler.sample(
        EDMProcess(), EDMGaussianNet("edm", MU, S), z.shape, noise=z, return_trajectory=True
    )
    np.testing.assert_allclose(traj.timesteps, sampler.sigmas()[:-1].numpy(), rtol=1e-12)
    torch.testing.assert_close(traj.xt[-1], x)
    sigma0 = torch.full((4, 1), float(sampler.sigmas()[0]), dtype=torch.float64)
    torch.testing.assert_close(traj.pred_x0[0].double(), edm_posterior_mean(80.0 * z.double(), sigma0, MU, S))


# --------------------------------------------------------------------------------------------- VP = DDIM
def vp_abar(index: torch.Tensor) -> torch.Tensor:
    """ᾱ of the continuous VP schedule at DDPM index i (τ = i / 999): exp(−½β_d τ² − β_min τ) = 1 / (1 + σ(τ)²)."""
    tau = index.double() / 999
    return torch.exp(-0.5 * VP_BETA_D * tau**2 - VP_BETA_MIN * tau)


class VPEpsNet:
    """A DDPM ε-network for x_0 ~ N(MU, S²) on the VP schedule, ``net(x_t, t)`` for any real index t (DDIM's
    integer steps and the VP preconditioning's c_noise alike): E[ε | x_t] = σ_t (x_t − a_t MU) / (a_t² S² + σ_t²)."""

    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = vp_abar(t).reshape(-1, *([1] * (xt.ndim - 1)))
        a, sig = abar.sqrt(), (1 - abar).sqrt()
        return (sig * (xt.double() - a * MU) / (a * a * S * S + sig * sig)).to(xt.dtype)


@pytest.mark.parametrize("steps", [10, 25])
def test_vp_preconditioning_reproduces_ddim(steps):
    """§2: an ε-network trained as DDPM, driven through the VP preconditioning (D = x − σ·ε̂(x/sqrt(1 + σ²),
    (M − 1)σ⁻¹(σ))), gives DDIM's samples. The grids correspond as: DDIM's kept index t_k (here ``steps`` of
    1..999, the network always called with t_k) ↔ σ_k = sqrt(1/ᾱ_{t_k} − 1) with ᾱ_t = exp(−½β_d τ² − β_min τ) at
    τ = t/999 (the continuous VP schedule sampled at DDPM's indices; index 0 would be σ = 0), then σ = 0 for
    DDIM's final step to ᾱ = 1; the states as x^EDM = x_t^DDPM / sqrt(ᾱ_t). Then Euler on the σ grid is DDIM(η = 0)
    and Heun is the PF-ODE Heun of samplers/ode.py without its Euler first step."""
    kept = torch.linspace(1, 999, steps).round().long()
    ddpm = Diffusion(NoiseSchedule.from_alphas_cumprod(vp_abar(kept)), "eps", timestep_map=kept)
    sigmas = torch.cat([((1 / vp_abar(kept) - 1).sqrt()).flip(0), torch.zeros(1, dtype=torch.float64)])
    net = VPEpsNet()
    z = torch.randn(256, 2, generator=gen(5))
    process = EDMProcess("vp")

    def denoise(x, sigma):
        return process.denoised(net, x, torch.full((x.shape[0],), sigma))

    start = z * math.sqrt(1 + float(sigmas[0]) ** 2)  # x_t = z at the first kept step, in EDM's variables
    ddim = DDIMSampler(None, 0.0, clip_denoised=False).sample(ddpm, net, z.shape, noise=z)
    euler = edm_sample(denoise, start, sigmas, second_order=False)
    torch.testing.assert_close(euler, ddim, rtol=1e-4, atol=1e-4)
    heun = HeunSampler(None, euler_first=False, clip_denoised=False).sample(ddpm, net, z.shape, noise=z)
    torch.testing.assert_close(edm_sample(denoise, start, sigmas), heun, rtol=1e-4, atol=1e-4)
    assert (euler - heun).abs().max() > 1e-3  # the two solvers do differ


# --------------------------------------------------------------------------------------------- training σ
def test_training_sigma_distributions_are_table_1():
    n = 200_000
    ln = EDMLogNormalSampler(-1.2, 1.2).sample(n, generator=gen(6))[0].log().double()
    assert abs(ln.mean() + 1.2) < Z * 1.2 / math.sqrt(n) and abs(ln.std() - 1.2) < 0.01
    sigma, w = VPUniformTimeSampler().sample(n, generator=gen(7))
    assert torch.equal(w, torch.ones(n))
    t = (
        torch.sqrt(VP_BETA_MIN**2 + 2 * VP_BETA_D * torch.log1p(sigma.double() ** 2)) - VP_BETA_MIN
    ) / VP_BETA_D
    assert t.min() >= 1e-5 - 1e-7 and t.max() <= 1.0 + 1e-6
    assert abs(t.mean() - 0.5) < Z * math.sqrt(1 / 12 / n) and abs(t.var() - 1 / 12) < 0.001
    u = (VELogUniformSampler(0.02, 100.0).sample(n, generator=gen(8))[0].double() / 0.02).log() / math.log(
        5000
    )
    assert u.min() >= 0 and u.max() <= 1 + 1e-6
    assert abs(u.mean() - 0.5) < Z * math.sqrt(1 / 12 / n) and abs(u.var() - 1 / 12) < 0.001


def test_validation_draw_and_buckets_use_the_reference_log_normal():
    """Validation draws ln σ ~ N(−1.2, 1.2²) whatever the training distribution, and the logged buckets are its
    deciles: the σ at the (k + ½)/10 quantile falls in bucket k."""
    from scipy.stats import norm

    process = EDMProcess()
    q = (np.arange(NUM_BUCKETS) + 0.5) / NUM_BUCKETS
    sigma = torch.tensor(np.exp(-1.2 + 1.2 * norm.ppf(q)), dtype=torch.float32)
    assert process.bucket(sigma, NUM_BUCKETS).tolist() == list(range(NUM_BUCKETS))
    assert process.bucket(torch.tensor([1e-6, 1e6]), NUM_BUCKETS).tolist() == [0, NUM_BUCKETS - 1]
    draw = process.draw_validation_t(100_000, "cpu", gen(9)).log().double()
    assert abs(draw.mean() + 1.2) < 0.02 and abs(draw.std() - 1.2) < 0.02
    again = process.draw_validation_t(100_000, "cpu", gen(9))
    assert torch.equal(draw, again.log().double())


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def edm_checkpoint(tmp_path_factory) -> Path:
    """A tiny class-conditional Fashion-MNIST UNet trained two steps with process=edm (label dropout 0.2)."""
    result = train_conditional(tmp_path_factory.mktemp("edm"), "edm", "trainer.log_every_n_steps=1")
    metrics = result["metrics"]
    assert math.isfinite(metrics["val/mse"])
    # the loss by noise-level decile is logged (deciles of the reference log-normal)
    assert sum(math.isfinite(metrics.get(bucket_key(k), math.nan)) for k in range(NUM_BUCKETS)) >= 1
    return Path(result["checkpoint"])


def test_a_checkpoint_holds_the_edm_process_and_samples_with_guidance(edm_checkpoint, tmp_path):
    parts, spec, _ = load_checkpoint(edm_checkpoint)
    assert isinstance(parts.diffusion, EDMProcess) and isinstance(parts.loss, EDMLoss)
    assert not any("_target_" in (spec.get(key) or {}) for key in ("schedule", "prediction", "variance"))
    assert isinstance(parts.timesteps, EDMLogNormalSampler) and isinstance(parts.sampler, EDMHeunSampler)
    assert "EDMStochasticSampler(steps=3" in guided_samples(edm_checkpoint, tmp_path, "edm_stochastic")
    with pytest.raises(
        ValueError, match=r"^sampler=ddim applies to process=ddpm, not process=edm; choose sampler="
    ):
        sample_checkpoint(edm_checkpoint, tmp_path, "sampler=ddim")


def test_guidance_combines_the_network_outputs_as_denoisers(edm_checkpoint):
    """D is affine in F with c_skip + ... at fixed (x, σ): guiding F is guiding D, (1 + w)·D_c − w·D_∅."""
    parts, spec, _ = load_checkpoint(edm_checkpoint)
    net, process = parts.net, parts.diffusion
    x = torch.randn(4, 1, 28, 28, generator=gen(10))
    sigma = torch.full((4,), 1.3)
    y = torch.tensor([1, 2, 3, 4])
    guided = process.denoised(ClassifierFreeGuidance(net, y, 1.5, 10), x, sigma)
    cond = process.denoised(lambda a, b: net(a, b, y), x, sigma)
    uncond = process.denoised(lambda a, b: net(a, b, torch.full_like(y, 10)), x, sigma)
    torch.testing.assert_close(guided, 2.5 * cond - 1.5 * uncond, rtol=1e-5, atol=1e-5)


EDM_OPTIONS = [
    ["process.precond=vp", "timesteps=edm_vp", "weighting=inverse_sigma2"],
    ["process.precond=ve", "timesteps=edm_ve", "weighting=inverse_sigma2"],
    ["weighting=uniform"],
    ["sampler=edm_euler"],
    ["sampler=edm_stochastic"],
    ["timesteps=edm_lognormal", "timesteps.p_mean=-0.4"],
]


@pytest.mark.parametrize("overrides", EDM_OPTIONS, ids=lambda o: ",".join(o))
def test_every_edm_option_fast_dev_runs(overrides, tmp_path):
    """Table 1's VP and VE rows (preconditioning, training σ, weighting), the other weightings and samplers."""
    fast_dev_run(tmp_path, "edm", *overrides)


def test_evaluate_refuses_bits_per_dim_without_a_bound(edm_checkpoint, tmp_path):
    from diffusion_lab.evaluate import evaluate

    overrides = [f"ckpt={edm_checkpoint}", "metrics=[bpd]", "device=cpu", f"out_dir={tmp_path / 'ev'}"]
    with pytest.raises(UserError) as err:
        evaluate(compose_train(overrides, config_name="evaluate"))
    assert str(err.value) == (
        "metrics=[bpd] needs a likelihood, which process=edm has not; leave bpd out (metrics=[fid])"
    )
    assert not (tmp_path / "ev").exists()


def test_export_to_diffusers_refuses_an_edm_checkpoint(edm_checkpoint, tmp_path):
    from diffusion_lab.export import export

    cfg = compose_train([f"ckpt={edm_checkpoint}", f"out={tmp_path / 'pipe'}"], config_name="export")
    with pytest.raises(UserError) as err:
        export(cfg)
    assert str(err.value) == (
        "format=diffusers exports the Gaussian process (process=ddpm); this checkpoint's is process=edm"
    )
    assert not (tmp_path / "pipe").exists()
