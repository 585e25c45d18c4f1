"""Rectified flow / flow matching checked against the papers: the path and its conversions, the loss, the
training-time densities of Esser et al. §3.1, the SD3 time shift, Euler and Heun driven by the exact velocity of
Gaussian data (closed-form transport) and of the 2-D Gaussian mixture of data=toy2d, and tiny training runs.

For x_0 ~ N(MU, S²) per dimension and x_t = (1 − t)x_0 + tε, the marginal is N((1 − t)MU, (1 − t)²S² + t²) and the
flow ODE dx/dt = E[ε − x_0 | x_t] keeps (x − (1 − t)MU)/sqrt((1 − t)²S² + t²) constant: it maps the noise x_1 = z
to x_0 = MU + S·z, exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_lab.build import load_checkpoint
from diffusion_lab.diffusion import (
    FlowLogitNormalSampler,
    FlowMatchingLoss,
    FlowModeSampler,
    FlowProcess,
    FlowUniformSampler,
)
from diffusion_lab.diffusion.guidance import ClassifierFreeGuidance
from diffusion_lab.samplers import FlowEulerSampler, FlowHeunSampler
from diffusion_lab.samplers.flow import flow_times
from diffusion_lab.score_names import NUM_BUCKETS
from gaussian_oracle import FlowGaussianNet, FlowMixtureNet, toy_mixture
from tiny_runs import fast_dev_run, guided_samples, sample_checkpoint, train_conditional

MU, S = 0.3, 0.5
Z = 5.0


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------- the path
def test_path_velocity_and_conversions_round_trip():
    g = gen(0)
    x0, eps = torch.randn(5, 2, 3, 3, generator=g), torch.randn(5, 2, 3, 3, generator=g)
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    p = FlowProcess()
    xt = p.corrupt(x0, t, eps)
    tb = t[:, None, None, None]
    torch.testing.assert_close(xt, (1 - tb) * x0 + tb * eps)
    v = p.velocity_target(x0, eps)
    torch.testing.assert_close(v, eps - x0)
    torch.testing.assert_close(p.to_x0(v, xt, t), x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p.to_eps(v, xt, t), eps, rtol=1e-6, atol=1e-6)
    # the network sees 1000·t (the scale the sinusoidal embedding is laid out for)
    net_x, net_t = p.net_input(xt, t)
    assert net_x is xt and torch.equal(net_t, 1000.0 * t)


def test_guidance_on_the_velocity_is_guidance_on_eps_and_x0():
    """x̂_0 = x − t·v̂ and ε̂ = x + (1 − t)·v̂ are affine in v̂ with weights (1 + w) and −w summing to one, so
    guiding v̂ gives exactly the guided ε̂ and x̂_0 (classifier-free guidance applies unchanged)."""
    g = gen(1)
    x, v_c, v_u = (torch.randn(4, 3, generator=g) for _ in range(3))
    t, w = torch.tensor([0.1, 0.4, 0.7, 0.95]), 2.5
    guided = (1 + w) * v_c - w * v_u
    for convert in (FlowProcess.to_x0, FlowProcess.to_eps):
        torch.testing.assert_close(
            convert(guided, x, t), (1 + w) * convert(v_c, x, t) - w * convert(v_u, x, t), rtol=1e-5, atol=1e-5
        )


def test_flow_matching_loss_and_its_minimum():
    """The loss is |v̂ − (ε − x_0)|²; with the exact velocity E[ε − x_0 | x_t] its mean is the irreducible
    Var(ε − x_0 | x_t) = S² + 1 − Cov(ε − x_0, x_t)² / Var(x_t), Cov = t − (1 − t)S², Var(x_t) = (1 − t)²S² + t²."""
    g = gen(2)
    n = 200_000
    x0 = MU + S * torch.randn(n, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.full((n,), 0.3, dtype=torch.float64)
    p = FlowProcess()
    xt = p.corrupt(x0, t, eps)
    out = FlowGaussianNet(MU, S)(xt, 1000.0 * t)
    terms = FlowMatchingLoss()(p, out, x0, xt, t, eps)
    # the network's output is read in float32 (as under mixed precision)
    torch.testing.assert_close(terms["loss"], ((out - (eps - x0)) ** 2).mean(1), rtol=1e-5, atol=1e-6)
    # Var(ε − x_0 | x_t) for the jointly Gaussian (x_0, ε, x_t): S² + 1 − (cov with x_t)² / Var(x_t)
    var_t = (1 - 0.3) ** 2 * S * S + 0.3**2
    irreducible = S * S + 1 - (0.3 - 0.7 * S * S) ** 2 / var_t
    assert abs(terms["loss"].mean().item() - irreducible) < Z * irreducible * math.sqrt(2 / n)


# --------------------------------------------------------------------------------------------- t densities
def test_training_time_densities():
    n = 200_000
    t, w = FlowUniformSampler().sample(n, generator=gen(3))
    assert torch.equal(w, torch.ones(n)) and t.min() >= 0 and t.max() <= 1
    assert abs(t.double().mean() - 0.5) < Z * math.sqrt(1 / 12 / n)
    t = FlowLogitNormalSampler(m=0.5, s=0.8).sample(n, generator=gen(4))[0].double()
    logit = torch.log(t) - torch.log1p(-t)
    assert abs(logit.mean() - 0.5) < Z * 0.8 / math.sqrt(n) and abs(logit.std() - 0.8) < 0.01


@pytest.mark.parametrize("s", [-1.0, 0.0, 0.81, 1.29, 2 / (math.pi - 2)])
def test_mode_sampling_is_f_mode_of_a_uniform(s):
    """Esser et al. §3.1: t = f_mode(u) = 1 − u − s(cos²(πu/2) − 1 + u), a decreasing bijection of [0, 1] for
    s in [−1, 2/(π − 2)], so P(t ≤ f_mode(u₀)) = 1 − u₀; s = 0 is uniform."""
    n = 200_000
    t = FlowModeSampler(s).sample(n, generator=gen(5))[0].double()
    assert t.min() >= 0 and t.max() <= 1
    for u0 in (0.1, 0.3, 0.5, 0.7, 0.9):
        f = 1 - u0 - s * (math.cos(math.pi * u0 / 2) ** 2 - 1 + u0)
        p = 1 - u0
        assert abs((t <= f).double().mean().item() - p) < Z * math.sqrt(p * (1 - p) / n)


def test_mode_scale_outside_the_monotone_range_is_refused():
    with pytest.raises(ValueError, match=r"timesteps\.s=1\.8 must be in \[-1, 2/\(pi-2\) = 1\.752\]"):
        FlowModeSampler(1.8)


def test_validation_draw_and_buckets():
    p = FlowProcess()
    t = p.draw_validation_t(100_000, "cpu", gen(6)).double()
    assert abs(t.mean() - 0.5) < 0.005 and t.min() >= 0 and t.max() <= 1
    edges = torch.tensor([0.0, 0.05, 0.1, 0.55, 0.999, 1.0])
    assert p.bucket(edges, NUM_BUCKETS).tolist() == [0, 0, 1, 5, 9, 9]


# --------------------------------------------------------------------------------------------- time grid
def test_time_grid_uniform_and_sd3_shift():
    torch.testing.assert_close(flow_times(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    shifted = flow_times(4, shift=3.0)
    t = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    torch.testing.assert_close(shifted, 3 * t / (1 + 2 * t))
    assert shifted[2] == pytest.approx(0.75)  # the midpoint moves towards the noise


# --------------------------------------------------------------------------------------------- samplers
def affine_map(sampler) -> tuple[float, float, int]:
    net = FlowGaussianNet(MU, S)
    z = torch.tensor([[0.0], [1.0]])
    out = sampler.sample(FlowProcess(), net, z.shape, noise=z).double().flatten()
    return float(out[1] - out[0]), float(out[0]), net.calls


@pytest.mark.parametrize(
    ("make", "bias", "evaluations"),
    # bias: bound on |A − S| / S (measured Euler 50: −2.9%, Heun 20: −0.42%, Heun 20 with shift 3: −4.4%)
    [
        (lambda: FlowEulerSampler(50), 0.035, 50),
        (lambda: FlowHeunSampler(20), 0.005, 39),
        (lambda: FlowHeunSampler(20, shift=3.0), 0.05, 39),
    ],
    ids=["euler50", "heun20", "heun20-shift3"],
)
def test_exact_velocity_recovers_gaussian_data(make, bias, evaluations):
    """Driven by the exact velocity, Euler and Heun map z -> A z + b with A within the stated bias of S and b = MU
    (the mean moves on a straight line, which Euler integrates exactly); the samples have the data's moments."""
    sampler = make()
    A, b, calls = affine_map(sampler)
    assert calls == sampler.num_evaluations() == evaluations
    assert abs(A - S) / S < bias and abs(b - MU) < 1e-6
    x = sampler.sample(FlowProcess(), FlowGaussianNet(MU, S), (20_000, 2), generator=gen(7))
    v = x.double().flatten().numpy()
    assert abs(v.mean() - b) < Z * A / math.sqrt(v.size)
    assert abs(v.var() - A * A) < Z * A * A * math.sqrt(2 / v.size)
    assert abs(v.mean() - MU) < 0.01 and abs(math.sqrt(v.var()) - S) / S < bias + 0.01


def test_convergence_orders():
    """Doubling the steps quarters Heun's error and halves Euler's (measured 4.4x and 1.9x from 10 to 20)."""
    err = {
        (cls.name, n): abs(affine_map(cls(n))[0] - S)
        for cls in (FlowEulerSampler, FlowHeunSampler)
        for n in (10, 20)
    }
    assert err["flow_heun", 10] / err["flow_heun", 20] > 3.5
    assert 1.7 < err["flow_euler", 10] / err["flow_euler", 20] < 2.3
    assert err["flow_heun", 20] < err["flow_euler", 20] / 10  # 39 evaluations against 20, 17x closer


def test_heun_transports_noise_to_the_toy2d_gaussian_mixture():
    """data=toy2d name=gaussian_mixture (8 components, s = 0.07 after scaling): Heun at 50 steps (99 evaluations)
    on its exact velocity sends N(0, I) onto the mixture. Assigning each sample to its nearest centre, the
    components get 1/8 of the samples each (5 binomial σ), and within a component the residual is N(0, s² I): its
    per-coordinate standard deviation within 5% of s (measured −2.9%), its mean within 0.05 s, and the 99th
    percentile of the distance to the centre within 5% of the Rayleigh value sqrt(−2 ln 0.01)·s = 3.03 s
    (measured 2.95 s). At 10 steps the samples still sit too close to the centres (0.56 s)."""
    centres, s = toy_mixture()
    c = torch.as_tensor(centres)
    n = 8000

    def transported(steps):
        x = FlowHeunSampler(steps).sample(FlowProcess(), FlowMixtureNet(centres, s), (n, 2), generator=gen(8))
        dist, k = torch.cdist(x.double(), c).min(1)
        return x.double() - c[k], dist, k

    residual, dist, k = transported(50)
    fractions = torch.bincount(k, minlength=8).double() / n
    assert (fractions - 1 / 8).abs().max() < Z * math.sqrt(1 / 8 * 7 / 8 / n)
    assert abs(residual.std().item() / s - 1) < 0.05
    assert residual.mean(0).abs().max() < 0.05 * s
    assert abs(dist.quantile(0.99).item() / (math.sqrt(-2 * math.log(0.01)) * s) - 1) < 0.05
    assert transported(10)[0].std().item() / s < 0.7


def test_trajectory_records_each_time_and_x0():
    sampler = FlowEulerSampler(5)
    z = torch.randn(3, 2, generator=gen(9))
    x, traj = sampler.sample(FlowProcess(), FlowGaussianNet(MU, S), z.shape, noise=z, return_trajectory=True)
    np.testing.assert_allclose(traj.timesteps, [1.0, 0.8, 0.6, 0.4, 0.2], rtol=1e-12)
    torch.testing.assert_close(traj.xt[-1], x)
    # at t = 1 the exact x̂_0 = x − v̂ = E[x_0 | x_1] = MU (x_1 is pure noise)
    torch.testing.assert_close(traj.pred_x0[0], torch.full_like(z, MU), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def flow_checkpoint(tmp_path_factory) -> Path:
    return Path(train_conditional(tmp_path_factory.mktemp("flow"), "flow")["checkpoint"])


def test_a_checkpoint_holds_the_flow_and_samples_with_guidance(flow_checkpoint, tmp_path):
    parts, spec, _ = load_checkpoint(flow_checkpoint)
    assert isinstance(parts.diffusion, FlowProcess) and isinstance(parts.loss, FlowMatchingLoss)
    assert isinstance(parts.timesteps, FlowLogitNormalSampler) and isinstance(parts.sampler, FlowEulerSampler)
    assert "FlowHeunSampler(steps=3" in guided_samples(flow_checkpoint, tmp_path, "flow_heun")
    with pytest.raises(ValueError, match=r"^sampler=edm_heun applies to process=edm, not process=flow"):
        sample_checkpoint(flow_checkpoint, tmp_path, "sampler=edm_heun")


def test_guided_velocity_is_the_guided_network_output(flow_checkpoint):
    parts, _, _ = load_checkpoint(flow_checkpoint)
    net, process = parts.net, parts.diffusion
    x, t, y = torch.randn(3, 1, 28, 28, generator=gen(10)), torch.full((3,), 0.4), torch.tensor([0, 5, 9])
    guided = process.velocity(ClassifierFreeGuidance(net, y, 3.0, 10), x, t)
    cond = net(x, 1000.0 * t, y)
    uncond = net(x, 1000.0 * t, torch.full_like(y, 10))
    torch.testing.assert_close(guided, 4.0 * cond - 3.0 * uncond, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [["timesteps=flow_uniform"], ["timesteps=flow_mode"], ["sampler=flow_heun", "sampler.shift=3.0"]],
    ids=lambda o: ",".join(o),
)
def test_every_flow_option_fast_dev_runs(overrides, tmp_path):
    fast_dev_run(tmp_path, "flow", *overrides)
