"""Cold diffusion (Bansal et al. 2022): the degradations against independent derivations, the paper's claim about
its two samplers on a linear degradation, the prior's round trip, a training run whose checkpoint samples from the
command line, and the one-line refusals of combinations that cannot work."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from scipy.ndimage import gaussian_filter

from conftest import cli_env, compose_train, group_options, small_train_cfg
from diffusion_lab.build import build_parts, load_checkpoint, make_spec
from diffusion_lab.diffusion import (
    ColdDiffusion,
    Diffusion,
    Downsample,
    GaussianBlur,
    GaussianMixturePrior,
    GaussianNoise,
    LinearSchedule,
    SquareMask,
    build_degradation,
    q_sample,
)
from diffusion_lab.errors import UserError, root_cause
from diffusion_lab.samplers import DDIMSampler, ImprovedColdSampler, NaiveColdSampler
from diffusion_lab.samplers.cold import cold_levels
from diffusion_lab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def images(n: int = 6, size: tuple[int, int] = (28, 28), seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1], (n, 1, H, W), float64: random fields blurred a little."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(n, 1, *size, generator=g, dtype=torch.float64) * 2 - 1
    return GaussianBlur(1, 0.5, 1.0)(raw, torch.zeros(n, dtype=torch.long)).clamp(-1, 1)


def levels(n: int, t: int) -> torch.Tensor:
    return torch.full((n,), t, dtype=torch.long)


def high_frequency_energy(x: torch.Tensor) -> float:
    """Energy above a quarter of the sampling rate (|FFT|², orthonormal), summed over the batch."""
    power = torch.fft.fft2(x, norm="ortho").abs().square()
    fy = torch.fft.fftfreq(x.shape[-2], dtype=torch.float64).abs()
    fx = torch.fft.fftfreq(x.shape[-1], dtype=torch.float64).abs()
    high = (fy[:, None] > 0.25) | (fx[None, :] > 0.25)
    return float(power[..., high].sum())


# ------------------------------------------------------------------------------------------- degradations
def test_blur_is_scipys_gaussian_filter_with_reflecting_boundaries():
    """Each level equals scipy's Gaussian filter of σ_t, mode='reflect' (the DCT's even extension); σ from 1.5
    up, where the sampled kernel's spectrum is the Gaussian's to 1e-5."""
    blur = GaussianBlur(num_timesteps=3, sigma_min=1.5, sigma_max=3.0)
    x = images(2, (24, 20))
    sigmas = blur.sigmas(24)
    torch.testing.assert_close(sigmas, torch.tensor([1.5, 1.5 * 2**0.5, 3.0], dtype=torch.float64))
    for t in range(3):
        ours = blur(x, levels(2, t))[:, 0].numpy()
        theirs = np.stack(
            [gaussian_filter(x[i, 0].numpy(), float(sigmas[t]), mode="reflect", truncate=6) for i in range(2)]
        )
        assert np.abs(ours - theirs).max() < 1e-5


def test_blur_schedule_is_monotone_from_near_identity_to_the_channel_mean():
    blur = GaussianBlur()  # the shipped defaults: 50 levels, σ 0.5 -> a full blur
    x = images(6)
    xt = [blur(x, levels(6, t)) for t in range(blur.num_timesteps)]
    energy = [high_frequency_energy(y) for y in xt]
    assert all(b < a for a, b in zip(energy, energy[1:]))  # strictly less detail at every level
    distortion = [float((y - x).square().mean()) for y in xt]
    assert distortion[0] < 0.05 * distortion[-1]  # level 0 is close to the identity
    mean = x.mean(dim=(2, 3), keepdim=True)
    assert float((xt[-1] - mean).abs().max()) < 1e-3  # the fully blurred image is the per-channel mean
    torch.testing.assert_close(xt[-1].mean(dim=(2, 3)), x.mean(dim=(2, 3)))  # every level keeps the mean


def test_mask_grows_nested_to_the_whole_image_filled_with_the_channel_mean():
    mask = SquareMask(num_timesteps=10)
    x = images(3, (28, 28))
    mean = x.mean(dim=(2, 3), keepdim=True)
    previous = torch.zeros(1, 1, 28, 28, dtype=torch.float64)
    for t in range(10):
        masked = mask.masked(levels(1, t), 28, 28)
        assert float(masked.mean()) == pytest.approx(((t + 1) / 10) ** 2, abs=1e-12)
        assert bool((masked >= previous).all())  # nested: what is masked stays masked
        previous = masked
        torch.testing.assert_close(mask(x, levels(3, t)), x + masked * (mean - x))
    torch.testing.assert_close(mask(x, levels(3, 9)), mean.expand_as(x))
    assert float((mask(x, levels(3, 0)) - x).square().mean()) < 0.05 * float((mean - x).square().mean())


def test_downsample_levels_are_block_means_each_losing_more():
    down = Downsample(num_timesteps=3, factor=2)
    x = images(4, (32, 32))
    distortion = []
    for t, block in enumerate((2, 4, 8)):
        y = down(x, levels(4, t))
        # independent: the mean of each block x block tile, repeated over it
        tiles = x.reshape(4, 1, 32 // block, block, 32 // block, block).mean(dim=(3, 5))
        expected = tiles.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)
        torch.testing.assert_close(y, expected)
        distortion.append(float((y - x).square().mean()))
    assert distortion[0] < distortion[1] < distortion[2]
    assert down.size(2, 28, 28) == (4, 4)  # 28 -> 14 -> 7 -> 4


def test_gaussian_noise_is_q_sample_of_the_schedule_exactly():
    schedule = LinearSchedule(20)
    noisy = GaussianNoise(schedule)
    x, eps = images(4).float(), torch.randn(4, 1, 28, 28)
    t = torch.tensor([0, 5, 13, 19])
    assert torch.equal(noisy(x, t, eps), q_sample(schedule, x, t, eps))
    assert noisy.num_timesteps == 20
    torch.testing.assert_close(noisy.implied_noise(x, noisy(x, t, eps), t), eps, rtol=1e-4, atol=1e-4)


NOISE_SCHEDULE = LinearSchedule(50)


@pytest.mark.parametrize(
    "degradation,tolerance",
    [
        (GaussianBlur(), 1e-3),  # the slowest mode's residual; the others fade faster
        (SquareMask(), 1e-12),
        (Downsample(), 1e-12),
        # what is left of x_0 - mean(x_0) is sqrt(ᾱ_{T-1}) of it, and |x_0 - mean| <= 2
        (GaussianNoise(NOISE_SCHEDULE), 2 * float(NOISE_SCHEDULE.alphas_cumprod[-1].sqrt())),
    ],
    ids=lambda d: getattr(d, "name", ""),
)
def test_what_survives_full_degradation_is_the_summary(degradation, tolerance):
    """The prior's premise: D(x_0, T-1) depends on x_0 only through summary(x_0)."""
    x = images(4)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    last = levels(4, degradation.num_timesteps - 1)
    rebuilt = degradation.from_summary(degradation.summary(x), tuple(x.shape))
    assert float((degradation(x, last, eps) - degradation(rebuilt, last, eps)).abs().max()) < tolerance


def test_the_process_corrupts_with_its_degradation_and_level_minus_one_is_clean():
    process = ColdDiffusion(SquareMask(5))
    x = images(3)
    t = torch.tensor([-1, 0, 4])
    out = process.corrupt(x, t)
    assert torch.equal(out[0], x[0])
    torch.testing.assert_close(out[1:], SquareMask(5)(x[1:], t[1:]))
    assert process.num_timesteps == 5 and not process.has_likelihood


# -------------------------------------------------------------------------------- the paper's two samplers
def linear_map(degradation, level: int, shape: tuple[int, ...]) -> torch.Tensor:
    """D(·, level) as a matrix (n, n), from its action on the basis images."""
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return degradation(basis, levels(n, level)).reshape(n, n).T


class ExactRestorer:
    """R(x_t, t) = D_t⁻¹ x_t for an invertible linear D: the exact restoration of each level."""

    def __init__(self, degradation, shape):
        self.shape = shape
        self.maps = [linear_map(degradation, t, shape) for t in range(degradation.num_timesteps)]
        self.calls: list[int] = []

    def __call__(self, x, t):
        self.calls.append(int(t[0]))
        flat = x.reshape(x.shape[0], -1).T  # (n, B)
        return torch.linalg.solve(self.maps[int(t[0])], flat).T.reshape(x.shape)


class PerturbedOracle:
    """x_0 plus a fresh error at every call (as a trained restorer's): R(x_t, t) = x_0 + e."""

    def __init__(self, x0, scale, seed=0):
        self.x0, self.scale = x0, scale
        self.gen = torch.Generator().manual_seed(seed)
        self.errors: list[tuple[int, torch.Tensor]] = []

    def __call__(self, x, t):
        error = self.scale * torch.randn(self.x0.shape, generator=self.gen, dtype=self.x0.dtype)
        self.errors.append((int(t[0]), error))
        return self.x0 + error


@pytest.mark.parametrize("sampler_cls", [NaiveColdSampler, ImprovedColdSampler])
@pytest.mark.parametrize("steps", [None, 3])
def test_an_exact_restorer_recovers_x0_with_both_samplers(sampler_cls, steps):
    blur = GaussianBlur(num_timesteps=5, sigma_min=0.3, sigma_max=1.2)  # invertible: attenuation >= 2e-2
    process = ColdDiffusion(blur)
    shape = (1, 8, 8)
    x0 = images(3, (8, 8))
    restorer = ExactRestorer(blur, shape)
    start = process.corrupt(x0, levels(3, 4))
    out = sampler_cls(steps=steps, clip_denoised=False).solve(process, restorer, start)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)
    assert restorer.calls == cold_levels(5, steps) == ([4, 3, 2, 1, 0] if steps is None else [4, 2, 0])


@pytest.mark.parametrize("name", ["gaussian_blur", "mask"])
def test_with_a_perturbed_restorer_the_improved_sampler_ends_closer(name):
    """The paper's argument: for a linear D the improved step adds only D(e, s') - D(e, s) of the restorer's
    error e, so x̂ = x_0 + Σ_s (D_{s'} - D_s) e_s; the naive sampler ends at x_0 + e_0, the last error whole."""
    degradation = build_degradation(name, num_timesteps=20)
    process = ColdDiffusion(degradation)
    x0 = images(4, (16, 16))
    start = process.corrupt(x0, levels(4, 19))
    ends = {}
    for sampler_cls in (NaiveColdSampler, ImprovedColdSampler):
        oracle = PerturbedOracle(x0, scale=0.05)
        ends[sampler_cls.name] = (
            sampler_cls(clip_denoised=False).solve(process, oracle, start),
            oracle.errors,
        )
    naive, naive_errors = ends["cold_naive"]
    torch.testing.assert_close(naive, x0 + naive_errors[-1][1])
    improved, errors = ends["cold_improved"]
    expected = x0.clone()
    for level, error in errors:
        expected += process.corrupt(error, levels(4, level - 1)) - process.corrupt(error, levels(4, level))
    torch.testing.assert_close(improved, expected)
    naive_error = float((naive - x0).square().mean().sqrt())
    improved_error = float((improved - x0).square().mean().sqrt())
    assert improved_error < naive_error, (improved_error, naive_error)


def test_on_gaussian_noise_the_improved_sampler_is_ddim_with_eta_zero():
    schedule = LinearSchedule(20)
    process = ColdDiffusion(GaussianNoise(schedule))

    def restorer(x, t):  # any x_0 predictor will do
        return torch.tanh(x) * 0.8 + 0.01 * t.float().reshape(-1, 1, 1, 1)

    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    ddim = DDIMSampler(steps=None, eta=0.0, clip_denoised=False).sample(
        Diffusion(schedule, prediction="x0"), restorer, x.shape, noise=x
    )
    for sampler_cls in (ImprovedColdSampler, NaiveColdSampler):
        ours = sampler_cls(clip_denoised=False).solve(process, restorer, x)
        torch.testing.assert_close(ours, ddim, rtol=1e-5, atol=1e-5)


def test_steps_are_evenly_spaced_levels_from_the_last():
    assert cold_levels(10, None) == list(range(9, -1, -1))
    assert cold_levels(10, 4) == [9, 6, 3, 0]
    assert cold_levels(10, 1) == [9]
    assert NaiveColdSampler(steps=4).num_evaluations(ColdDiffusion(SquareMask(10))) == 4
    for bad in ("ddim5", 0, 11):
        with pytest.raises(ValueError) as err:
            cold_levels(10, bad)
        assert str(err.value) == (
            f"sampler.steps={bad!r} is invalid: a cold sampler takes a number of levels between 1 and T=10 "
            "(or null for all)"
        )


# ------------------------------------------------------------------------------------------------- prior
def test_prior_round_trip_gives_the_same_samples_from_the_same_generator():
    process = ColdDiffusion(GaussianBlur(10), prior_components=3)
    data = images(64, (8, 8)) * torch.linspace(0.2, 1.0, 64, dtype=torch.float64).reshape(-1, 1, 1, 1)
    process.fit_prior(data.float())
    state = process.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = ColdDiffusion(GaussianBlur(10), prior_components=3)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))  # plain tensors only
    noise = torch.randn(5, 1, 8, 8)
    first = process.prior_sample(noise, torch.Generator().manual_seed(7))
    again = loaded.prior_sample(noise, torch.Generator().manual_seed(7))
    assert torch.equal(first, again)
    assert not torch.equal(first, loaded.prior_sample(noise, torch.Generator().manual_seed(8)))
    # a blur's start is a constant image per channel, plus noise_std of the noise
    constant = first - process.noise_std * noise
    torch.testing.assert_close(constant, constant.mean(dim=(2, 3), keepdim=True).expand_as(constant))


def test_prior_draws_follow_the_fitted_mixture():
    """Sample mean and covariance of many draws against the mixture's own: Σ w_k μ_k and
    Σ w_k (Σ_k + μ_k μ_kᵀ) - μ μᵀ."""
    g = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(300, 2, generator=g) * 0.1 + 1, torch.randn(100, 2, generator=g) * 0.3 - 1])
    prior = GaussianMixturePrior()
    prior.fit(z, components=2, seed=0)
    w, mu, cov = prior.weights, prior.means, prior.covariances
    mean = (w[:, None] * mu).sum(0)
    second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0) - mean[:, None] * mean[
        None, :
    ]
    draws = prior.sample(40000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(draws.mean(0), mean, rtol=0, atol=0.02)
    torch.testing.assert_close(torch.cov(draws.T), second, rtol=0, atol=0.03)
    torch.testing.assert_close(mean, z.double().mean(0), rtol=0, atol=0.02)  # and the mixture fits the data


def test_an_unfitted_prior_and_non_images_are_refused_in_one_line():
    process = ColdDiffusion(GaussianBlur(10))
    with pytest.raises(ValueError) as err:
        process.prior_sample(torch.randn(2, 1, 8, 8))
    assert str(err.value) == (
        "process=cold has no fitted prior: `python -m diffusion_lab.train` fits it to the training data before "
        "training (or call fit_prior(images))"
    )
    with pytest.raises(ValueError) as err:
        process.fit_prior(torch.randn(10, 2))
    assert str(err.value) == "process=cold degrades images (C, H, W); this data's items have shape (2,)"


# ------------------------------------------------------------------------------- one-line refusals
REFUSED = [
    (
        ["process=cold", "loss=simple"],
        "loss=simple applies to process=ddpm, not process=cold; choose loss=restoration",
    ),
    (
        ["process=cold", "sampler=ddim"],
        "sampler=ddim applies to process=ddpm, not process=cold; choose sampler=cold_naive|cold_improved",
    ),
    (
        ["loss=restoration"],
        "loss=restoration applies to process=cold, not process=ddpm; choose loss=simple|vlb|hybrid",
    ),
    (
        ["sampler=cold_improved"],
        "sampler=cold_improved applies to process=cold, not process=ddpm; choose sampler=ddpm|ddim|dpmpp2m|heun|euler",
    ),
    (
        ["process=cold", "weighting=snr"],
        "weighting=snr applies to process=ddpm, not process=cold; choose weighting=uniform",
    ),
    (
        ["process=cold", "prediction=v"],
        "process=cold takes no prediction but prediction=v is set; drop it (~prediction where an experiment sets "
        "it) or use process=ddpm",
    ),
]


@pytest.mark.parametrize("overrides,message", REFUSED)
def test_incompatible_options_are_refused_naming_both(overrides, message):
    with pytest.raises(Exception) as err:
        build_parts(make_spec(compose_train(overrides), (1, 8, 8), None))
    assert str(root_cause(err.value)) == message


def run_cli(entry: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"diffusion_lab.{entry}", *args],
        cwd=cwd,
        env=cli_env(cwd),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["process=cold", "loss=simple"], REFUSED[0][1]),
        pytest.param(
            ["degradation=mask"],
            "degradation= chooses cold diffusion's degradation: add process=cold (process=cold degradation=mask)",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_the_train_command_refuses_in_one_line(args, message, tmp_path):
    proc = run_cli("train", args, tmp_path)
    assert proc.returncode == 2
    assert (proc.stdout + proc.stderr).strip() == f"error: {message}"
    assert not list(tmp_path.glob("outputs/*/runs/*"))


# ---------------------------------------------------------------------------------- training end to end
COLD_RUN = ["process=cold", "data=digits", "sampler.steps=3"]


@pytest.fixture(scope="module")
def cold_checkpoint(tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("cold_run")
    overrides = ["degradation=mask", "degradation.num_timesteps=6", "trainer.max_steps=2"]
    result = train(small_train_cfg(out, *COLD_RUN, *overrides))
    return Path(result["checkpoint"])


def test_the_checkpoint_carries_the_prior_fitted_to_the_training_data(cold_checkpoint):
    parts, spec, _ = load_checkpoint(cold_checkpoint)
    assert isinstance(parts.diffusion, ColdDiffusion) and isinstance(parts.diffusion.degradation, SquareMask)
    assert parts.diffusion.degradation.num_timesteps == 6
    datamodule = instantiate(spec["data"])
    fresh = ColdDiffusion(SquareMask(6), prior_images=spec["process"]["prior_images"])
    fresh.fit_prior(datamodule.real_images("train", fresh.prior_images))
    stored = parts.diffusion.state_dict()
    assert sorted(stored) == ["covariances", "means", "weights"]
    for key, value in fresh.state_dict().items():
        assert torch.equal(stored[key], value), key


def test_the_sample_command_draws_images_from_a_cold_checkpoint(cold_checkpoint, tmp_path):
    proc = run_cli(
        "sample",
        [
            f"ckpt={cold_checkpoint}",
            "n=6",
            f"out_dir={tmp_path}",
            "name=cold",
            "device=cpu",
            "progress=false",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ImprovedColdSampler(steps=3" in proc.stdout
    samples = np.load(tmp_path / "cold.npz")
    images_ = samples[next(iter(samples.files))]
    assert images_.shape == (6, 16, 16, 1) and images_.dtype == np.uint8
    assert (tmp_path / "cold.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cold_checkpoint_refuses_ddpm_samplers_and_bits_per_dim(cold_checkpoint, tmp_path):
    from diffusion_lab.evaluate import evaluate
    from diffusion_lab.sample import sample

    cfg = compose_train(
        [f"ckpt={cold_checkpoint}", f"out_dir={tmp_path}", "sampler=ddim"], config_name="sample"
    )
    with pytest.raises(ValueError) as err:
        sample(cfg)
    assert str(err.value) == REFUSED[1][1]
    cfg = compose_train(
        [f"ckpt={cold_checkpoint}", "metrics=[bpd,fid]", "device=cpu"], config_name="evaluate"
    )
    with pytest.raises(UserError) as err:
        evaluate(cfg)
    assert (
        str(err.value)
        == "metrics=[bpd] needs a likelihood, which process=cold has not; leave bpd out (metrics=[fid])"
    )


def test_gaussian_only_figures_and_export_refuse_a_cold_process(cold_checkpoint, tmp_path):
    from diffusion_lab.export import export
    from diffusion_lab.visualize import visualize

    cases = [
        (
            "visualize",
            ["figure=vlb", f"ckpt={cold_checkpoint}"],
            "figure=vlb needs a likelihood, which this checkpoint's process=cold has not",
        ),
        (
            "visualize",
            ["figure=spectrum", "process=cold"],
            "figure=spectrum plots the Gaussian noise schedule; process=cold has none (figure=forward draws "
            "process=ddpm or cold)",
        ),
        (
            "export",
            [f"ckpt={cold_checkpoint}", f"out={tmp_path / 'pipeline'}"],
            "format=diffusers exports the Gaussian process (process=ddpm); this checkpoint's is process=cold",
        ),
    ]
    for command, overrides, message in cases:
        cfg = compose_train(
            [*overrides, f"out_dir={tmp_path}"] if command == "visualize" else overrides, config_name=command
        )
        with pytest.raises(UserError) as err:
            (visualize if command == "visualize" else export)(cfg)
        assert str(err.value) == message


def test_the_trajectory_figure_starts_from_the_prior(cold_checkpoint, tmp_path):
    from diffusion_lab.visualize import visualize

    cfg = compose_train(
        [
            "figure=trajectory",
            f"ckpt={cold_checkpoint}",
            "n=2",
            "show=3",
            f"out_dir={tmp_path}",
            "device=cpu",
        ],
        config_name="visualize",
    )
    saved = np.load(visualize(cfg)["data"])
    parts, _, _ = load_checkpoint(cold_checkpoint)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn((2, 1, 16, 16), generator=gen)
    start = parts.diffusion.prior_sample(noise, gen)
    assert saved["timesteps"].tolist() == [5, 2, 0]  # sampler.steps=3 of T=6 levels
    assert np.allclose(saved["xt"][0], start.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [[f"degradation={o}"] for o in group_options("degradation")]
    + [["sampler=cold_naive"], ["loss.norm=l2"], ["timesteps=importance"]],
    ids=lambda o: o[0],
)
def test_every_cold_option_trains(overrides, tmp_path):
    """A fast_dev_run (one training and one validation batch, then final samples) for each option."""
    result = train(small_train_cfg(tmp_path, *COLD_RUN, *overrides, fast_dev_run=True))
    assert result["global_step"] == 1
    assert np.isfinite(result["metrics"]["train/loss"])
    assert "val/bpd_one_t_mc" not in result["metrics"]  # no likelihood: only the loss terms are validated
    assert Path(result["samples_npz"]).is_file()
