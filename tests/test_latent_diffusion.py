"""Latent diffusion (Rombach et al. 2022): the autoencoder trained in the framework, its KL term, the latent data
(scale factor, cache, mirrored codes), every diffusion option composing on latents, and decoding before any
image is saved or scored. Tiny networks on the offline digits."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from conftest import (
    TINY_AUTOENCODER,
    cli_env,
    compose_train,
    group_options,
    process_options,
    small_train_cfg,
    train_tiny_autoencoder,
)
from diffusion_lab.build import (
    CheckpointError,
    build_datamodule,
    build_module,
    load_autoencoder,
    load_checkpoint,
)
from diffusion_lab.data import EncodedDataset
from diffusion_lab.diffusion import CosineSchedule, Diffusion
from diffusion_lab.errors import UserError
from diffusion_lab.evaluate import evaluate
from diffusion_lab.io import to_uint8
from diffusion_lab.latent import AutoencoderLoss, LatentDecoder, gaussian_kl, sample_images, sampler_for
from diffusion_lab.latent.datamodule import LatentDataModule
from diffusion_lab.metrics.classifier import SmallClassifier, save_classifier
from diffusion_lab.metrics.quality import SampleQuality
from diffusion_lab.nets import AutoencoderKL
from diffusion_lab.sample import sample
from diffusion_lab.samplers import DDIMSampler
from diffusion_lab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS_SHAPE = (1, 16, 16)  # conf/data/digits.yaml
LATENT_SHAPE = (2, 8, 8)  # the tiny autoencoder: f = 2, 2 latent channels


def latent_overrides(autoencoder: Path, cache: Path, *overrides: str) -> list[str]:
    return ["data=digits", f"autoencoder={autoencoder}", f"paths.cache_dir={cache}", *overrides]


def latent_datamodule(autoencoder: Path, cache: Path, *overrides: str) -> LatentDataModule:
    cfg = small_train_cfg(cache.parent / "run", *latent_overrides(autoencoder, cache, *overrides))
    return build_datamodule(cfg)


class CountingEncoder:
    """Counts ``AutoencoderKL.encode`` calls (patched on the class, so any loaded autoencoder counts)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = AutoencoderKL.encode

        def encode(net, x):
            self.calls += 1
            return original(net, x)

        monkeypatch.setattr(AutoencoderKL, "encode", encode)


# ------------------------------------------------------------------------------------------ the network
@pytest.mark.parametrize(
    "channel_mult,latent", [([1, 2, 2], (4, 7, 7)), ([1, 2], (4, 14, 14)), ([1], (4, 28, 28))]
)
def test_downsampling_factor_sets_the_latent_shape(channel_mult, latent):
    net = AutoencoderKL(base_channels=8, groups=4, channel_mult=channel_mult, latent_channels=4)
    x = torch.randn(2, 1, 28, 28)
    mean, logvar = net.encode(x)
    assert net.latent_shape((1, 28, 28)) == latent
    assert mean.shape == logvar.shape == (2, *latent)
    assert net.decode(mean).shape == x.shape
    x_hat, m, _ = net(x, sample=False)
    torch.testing.assert_close(m, mean)
    torch.testing.assert_close(x_hat, net.decode(mean))


def test_latent_shape_refuses_images_that_do_not_fit():
    net = AutoencoderKL(base_channels=8, groups=4, channel_mult=[1, 2, 2], latent_channels=4)
    with pytest.raises(ValueError, match=r"takes 1 channel\(s\) and sizes divisible by .* f=4"):
        net.latent_shape((1, 30, 30))
    with pytest.raises(ValueError, match="do not fit"):
        net.latent_shape((3, 28, 28))


def test_posterior_sample_is_the_reparameterised_mean_and_log_variance():
    torch.manual_seed(0)
    net = AutoencoderKL(base_channels=8, groups=4, channel_mult=[1, 2], latent_channels=2)
    x = torch.randn(3, 1, 8, 8)
    mean, logvar = net.encode(x)
    gen = torch.Generator().manual_seed(5)
    x_hat, _, _ = net(x, generator=gen)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(x_hat, net.decode(mean + torch.exp(0.5 * logvar) * noise))


# ------------------------------------------------------------------------------------------------ the loss
def test_kl_term_against_torch_distributions():
    torch.manual_seed(0)
    mean, logvar = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, prior).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_kl(mean, logvar), expected)
    assert torch.all(gaussian_kl(torch.zeros(2, 4), torch.zeros(2, 4)) == 0)  # the prior itself


@pytest.mark.parametrize("reconstruction", ["l1", "l2"])
def test_loss_terms_are_per_sample_sums(reconstruction):
    torch.manual_seed(1)
    x, x_hat = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    mean, logvar = torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2)
    terms = AutoencoderLoss(reconstruction, kl_weight=0.25)(x, x_hat, mean, logvar)
    diff = (x_hat - x).reshape(3, -1)
    rec = diff.abs().sum(1) if reconstruction == "l1" else diff.square().sum(1)
    torch.testing.assert_close(terms["rec"], rec)
    torch.testing.assert_close(terms["loss"], rec + 0.25 * gaussian_kl(mean, logvar))
    assert {k: v.shape for k, v in terms.items()} == {k: (3,) for k in ("loss", "rec", "kl")}


def test_loss_refuses_bad_options_in_one_line():
    with pytest.raises(
        ValueError, match=r"task.loss.reconstruction='lpips' is unknown; choose one of \['l1', 'l2'\]"
    ):
        AutoencoderLoss("lpips")
    with pytest.raises(ValueError, match="task.loss.kl_weight=-1 must be >= 0"):
        AutoencoderLoss("l1", kl_weight=-1)


# --------------------------------------------------------------------------------------- training the autoencoder
def test_autoencoder_trains_and_logs_reconstruction_metrics(tmp_path):
    """Reconstruction error of the posterior mean on the validation images: far below the same network's at
    initialisation; the logged val/rec_mse and val/psnr are those of the checkpoint, recomputed here."""
    cfg = small_train_cfg(tmp_path, *TINY_AUTOENCODER)
    L.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    untrained = build_module(cfg, datamodule.data_shape, None).net.eval()
    x = datamodule.real_images("val", 16)  # the whole validation split (one batch)

    ckpt = train_tiny_autoencoder(tmp_path)
    result_csv = (tmp_path / "csv" / "metrics.csv").read_text()
    trained = load_autoencoder(ckpt)
    with torch.no_grad():
        before = (untrained(x, sample=False)[0] - x).square().mean()
        mean, logvar = trained.net.encode(x)
        x_hat = trained.net.decode(mean)
    per_image = (x_hat - x).square().flatten(1).mean(1)
    assert per_image.mean() < 0.25 * before, (float(per_image.mean()), float(before))

    header, *rows = [line.split(",") for line in result_csv.strip().splitlines()]
    last = {k: v for row in rows for k, v in zip(header, row) if v}
    assert float(last["val/rec_mse"]) == pytest.approx(float(per_image.mean()), rel=1e-4)
    assert float(last["val/psnr"]) == pytest.approx(float((10 * torch.log10(4 / per_image)).mean()), rel=1e-4)
    assert float(last["val/kl"]) == pytest.approx(float(gaussian_kl(mean, logvar).mean()), rel=1e-4)
    spec = trained.spec
    assert spec["task"] == "autoencoder" and spec["data_shape"] == list(DIGITS_SHAPE)
    assert spec["loss"]["kl_weight"] == 1e-6 and spec["autoencoder"]["latent_channels"] == 2
    assert (tmp_path / "samples" / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------------------------- latent data
def test_scale_factor_is_one_over_the_std_of_the_encoded_training_set(tiny_autoencoder, tmp_path):
    dm = latent_datamodule(tiny_autoencoder, tmp_path / "cache")
    dm.setup("fit")
    assert dm.data_shape == LATENT_SHAPE and dm.num_classes == 10
    images = dm.pixels.real_images("train", 10**6)  # the whole training split, unaugmented
    with torch.no_grad():
        codes = load_autoencoder(tiny_autoencoder).net.encode(images)[0]
    expected = 1.0 / codes.double().std().item()
    assert dm.scale_factor == pytest.approx(expected, rel=1e-5)
    served = dm.dataset("train")
    assert isinstance(served, EncodedDataset) and len(served) == len(images)
    torch.testing.assert_close(served.images(len(served)), codes * expected, rtol=1e-5, atol=1e-5)
    assert dm.latent_spec()["scale_factor"] == dm.scale_factor
    # what the diffusion sees has unit variance over the training set
    assert served.images(len(served)).std().item() == pytest.approx(1.0, rel=1e-5)
    # ... and the validation split is encoded with the same autoencoder and scaled by the same factor
    val_images = dm.pixels.real_images("val", 10**6)
    with torch.no_grad():
        val_codes = load_autoencoder(tiny_autoencoder).net.encode(val_images)[0]
    torch.testing.assert_close(dm.dataset("val").images(10**6), val_codes * expected, rtol=1e-5, atol=1e-5)


def test_encode_cache_is_read_back_and_keyed_by_the_autoencoder(tiny_autoencoder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    counter = CountingEncoder(monkeypatch)
    first = latent_datamodule(tiny_autoencoder, cache)
    first.setup("fit")
    assert counter.calls > 0
    files = sorted(p.name for p in (cache / "latents").glob("*.pt"))
    assert len(files) == 2 and {f.split("-")[0] for f in files} == {"train", "val"}

    counter.calls = 0
    again = latent_datamodule(tiny_autoencoder, cache)
    again.setup("fit")
    assert counter.calls == 0  # read from the cache, not encoded again
    torch.testing.assert_close(again.dataset("train").data, first.dataset("train").data)
    assert again.scale_factor == first.scale_factor

    other_ckpt = train_tiny_autoencoder(tmp_path / "other", "seed=7")
    other = latent_datamodule(other_ckpt, cache)
    assert other.cache_key("train") != first.cache_key("train")
    assert other.cache_key("train")["autoencoder_sha256"] == load_autoencoder(other_ckpt).sha256
    other.setup("fit")
    assert counter.calls > 0  # another autoencoder: encoded again, into other files
    assert len(list((cache / "latents").glob("*.pt"))) == 4
    # other data options are other entries too
    limited = latent_datamodule(tiny_autoencoder, cache, "++data.limit_train=32")
    assert limited.cache_key("train") != first.cache_key("train")


def test_random_flip_encodes_the_mirrored_images_too(tiny_autoencoder, tmp_path):
    dm = latent_datamodule(tiny_autoencoder, tmp_path / "cache", "++data.random_flip=true")
    train_set = dm.dataset("train")
    images = dm.pixels.real_images("train", 10**6)
    with torch.no_grad():
        mirrored = load_autoencoder(tiny_autoencoder).net.encode(images.flip(-1))[0] * dm.scale_factor
    assert train_set.data.shape == (len(images), 2, *LATENT_SHAPE)
    torch.testing.assert_close(train_set.data[:, 1], mirrored, rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    batch = train_set.transform(train_set.data, augment=True)
    picked_mirror = (batch - train_set.data[:, 1]).flatten(1).abs().amax(1) == 0
    assert 0.3 < picked_mirror.float().mean() < 0.7  # about half of them, per item
    assert not dm.dataset("val").random_flip  # only the training split flips


def test_on_gpu_batcher_serves_latents(tiny_autoencoder, tmp_path):
    """The datamodule's device batcher takes the encoded set as it takes pixel sets (here on the CPU device)."""
    from diffusion_lab.data.datamodule import DeviceBatches

    dm = latent_datamodule(tiny_autoencoder, tmp_path / "cache", "++data.random_flip=true")
    batches = DeviceBatches(dm.dataset("train"), 8, "cpu")
    x, y = next(iter(batches))
    assert x.shape == (8, *LATENT_SHAPE) and y.shape == (8,)


# ------------------------------------------------------------------------------------------------ decoding
def test_latents_are_decoded_unclipped_and_images_clamped():
    """A model whose x̂_0 is 3 everywhere (x0-prediction, deterministic DDIM ends at x̂_0): the latents stay 3 (a
    clip to [-1, 1] would make them 1), the decoder (identity, scale 10) gives 0.3; without a decoder the
    pixel sample is clamped to 1."""
    diffusion = Diffusion(CosineSchedule(20), "x0", "fixed_small")
    sampler = DDIMSampler(steps=5, eta=0.0, clip_denoised=True)

    def model(x, t):
        return torch.full_like(x, 3.0)

    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    decoder = LatentDecoder(nn.Identity(), scale_factor=10.0)
    decoded = sample_images(sampler, diffusion, model, noise, decoder=decoder)
    torch.testing.assert_close(decoded, torch.full_like(noise, 0.3))
    assert sample_images(sampler, diffusion, model, noise).eq(1.0).all()
    assert sampler.clip_denoised  # the configured sampler is left as it is ...
    assert not sampler_for(sampler, decoder).clip_denoised  # ... the one that runs on latents never clips
    assert sampler_for(sampler, None) is sampler


def test_decoder_decodes_in_eval_mode_whatever_the_module_mode():
    net = nn.Sequential(nn.Dropout(0.9))
    decoder = LatentDecoder(net, scale_factor=2.0).train()
    z = torch.ones(4, 8)
    torch.testing.assert_close(decoder(z), z / 2)
    assert decoder.net.training  # its mode follows its holder


# ---------------------------------------------------------------------- diffusion options composing on latents
COMPOSITIONS = [
    *[[f"sampler={s}", "sampler.steps=3"] for s in process_options("sampler", "ddpm")],  # latents run ddpm
    *[[f"prediction={p}"] for p in group_options("prediction")],
    ["loss=hybrid"],  # brings a learned variance: the network outputs 2 x latent channels
    ["loss=vlb"],
    ["weighting=min_snr"],
    ["schedule=cosine", "timesteps=importance"],
    ["model=dit_s", "model.patch_size=2", "model.hidden_size=32", "model.depth=1", "model.num_heads=2"],
    ["conditional=true", "p_uncond=0.2"],
]


@pytest.fixture(scope="module")
def latent_data(tiny_autoencoder, tmp_path_factory) -> LatentDataModule:
    dm = latent_datamodule(tiny_autoencoder, tmp_path_factory.mktemp("cache"))
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("overrides", COMPOSITIONS, ids=lambda o: ",".join(o))
def test_diffusion_options_compose_on_latents(overrides, latent_data, tiny_autoencoder, tmp_path):
    cfg = small_train_cfg(tmp_path, *latent_overrides(tiny_autoencoder, tmp_path / "cache", *overrides))
    num_classes = latent_data.num_classes if cfg.conditional else None
    module = build_module(cfg, latent_data.data_shape, num_classes, latent=latent_data)
    assert module.spec["data_shape"] == list(LATENT_SHAPE)
    assert module.spec["latent"]["scale_factor"] == latent_data.scale_factor
    assert not module.spec["sampler"]["clip_denoised"] and not module.sampler.clip_denoised  # as it runs
    x0, y = next(iter(torch.utils.data.DataLoader(latent_data.dataset("train"), batch_size=4)))
    t, _ = module.timesteps.sample(4)
    terms = module._forward_terms(x0, y if num_classes else None, t, torch.randn_like(x0))
    assert terms["loss"].shape == (4,) and torch.isfinite(terms["loss"]).all()
    labels = torch.tensor([0, 3]) if num_classes else None
    images = module.generate(2, labels=labels, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, *DIGITS_SHAPE)  # decoded: pixels, not latents
    assert torch.isfinite(images).all() and images.abs().max() <= 1


# ------------------------------------------------------------------------- train, sample and evaluate end to end
@pytest.fixture(scope="module")
def latent_checkpoint(tiny_autoencoder, tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("latent_run")
    cfg = small_train_cfg(out, *latent_overrides(tiny_autoencoder, out / "cache", "trainer.max_steps=3"))
    result = train(cfg)
    assert result["global_step"] == 3
    assert np.load(result["samples_npz"])["images"].shape == (4, 16, 16, 1)  # final samples: pixels
    return Path(result["checkpoint"])


def test_checkpoint_carries_the_latent_space_and_the_decoder(latent_checkpoint, tiny_autoencoder):
    parts, spec, _ = load_checkpoint(latent_checkpoint)
    trained = load_autoencoder(tiny_autoencoder)
    latent = spec["latent"]
    assert spec["data_shape"] == list(LATENT_SHAPE) and latent["image_shape"] == list(DIGITS_SHAPE)
    assert latent["autoencoder_sha256"] == trained.sha256 and latent["encoding"] == "posterior_mean"
    assert isinstance(parts.decoder, LatentDecoder) and parts.decoder.scale_factor == latent["scale_factor"]
    for key, value in trained.net.decoder.state_dict().items():
        torch.testing.assert_close(parts.decoder.net.state_dict()[key], value)
    assert parts.net.conv_in.in_channels == LATENT_SHAPE[0]  # the network runs on latents


def test_loading_a_latent_eps_model_on_the_cosine_schedule_warns(latent_checkpoint, tmp_path):
    """Sampling or evaluating such a checkpoint gives the warning its training run gave (the unclipped first
    steps amplify ε̂'s error); the same checkpoint with v-prediction loads silently."""
    from omegaconf import OmegaConf

    from diffusion_lab.build import read_checkpoint
    from diffusion_lab.module import CHECKPOINT_KEY

    ckpt = read_checkpoint(latent_checkpoint)
    messages = {}
    for prediction in ("eps", "v"):
        cfg = small_train_cfg(tmp_path / "cfg", f"prediction={prediction}", "schedule=cosine")
        for group in ("prediction", "schedule"):
            ckpt[CHECKPOINT_KEY]["spec"][group] = OmegaConf.to_container(cfg[group], resolve=True)
        path = tmp_path / f"{prediction}.ckpt"
        torch.save(ckpt, path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_checkpoint(path)
        messages[prediction] = [str(w.message) for w in caught if "prediction=eps" in str(w.message)]
    assert len(messages["eps"]) == 1 and messages["eps"][0].startswith(
        "prediction=eps on a schedule whose last"
    )
    assert messages["v"] == []


def test_sample_cli_writes_decoded_images(latent_checkpoint, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_lab.sample", f"ckpt_path={latent_checkpoint}", "n=3", "steps=4",
         f"out_dir={tmp_path}", "name=latent", "device=cpu", "progress=false", "seed=2"],
        capture_output=True, text=True, env=cli_env(tmp_path), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "clip_denoised=False" in proc.stdout  # what ran on latents, as reported
    images = np.load(tmp_path / "latent.npz")["images"]
    assert images.dtype == np.uint8 and images.shape == (3, 16, 16, 1)

    # the same images by hand: the latent sample from the same noise, unscaled, decoded, clamped
    parts, spec, _ = load_checkpoint(latent_checkpoint)
    gen = torch.Generator().manual_seed(2)
    noise = torch.randn((3, *LATENT_SHAPE), generator=gen)
    sampler = DDIMSampler(steps=4, eta=0.0, clip_denoised=False)
    z = sampler.sample(parts.diffusion, parts.net, noise.shape, "cpu", noise=noise, generator=gen)
    with torch.no_grad():
        by_hand = load_autoencoder(spec["latent"]["autoencoder_path"]).net.decode(
            z / spec["latent"]["scale_factor"]
        )
    expected = to_uint8(by_hand.clamp(-1, 1)).permute(0, 2, 3, 1).numpy()
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1  # float rounding at a .5 boundary


def test_sample_in_process_writes_pixel_images(latent_checkpoint, tmp_path):
    cfg = compose_train(
        [
            f"ckpt={latent_checkpoint}",
            f"out_dir={tmp_path}",
            "device=cpu",
            "progress=false",
            "n=2",
            "steps=2",
        ],
        config_name="sample",
    )
    result = sample(cfg)
    assert np.load(result["samples_npz"])["images"].shape == (2, 16, 16, 1)


def test_evaluate_scores_decoded_images(latent_checkpoint, tmp_path, monkeypatch):
    torch.manual_seed(0)
    classifier = save_classifier(SmallClassifier(1, 10, 16, width=4, feature_dim=8), tmp_path / "clf.pt")
    seen = []
    update = SampleQuality.update

    def recording_update(self, images, *args, **kwargs):
        seen.append(tuple(images.shape[1:]))
        return update(self, images, *args, **kwargs)

    monkeypatch.setattr(SampleQuality, "update", recording_update)
    cfg = compose_train(
        [f"ckpt={latent_checkpoint}", f"out_dir={tmp_path / 'eval'}", "device=cpu", "progress=false",
         f"features={classifier}", f"cache_dir={tmp_path / 'metrics'}", "metrics=[fid]", "n=4", "n_real=8",
         "batch_size=4", "steps=[2]"],
        config_name="evaluate",
    )  # fmt: skip
    result = evaluate(cfg)
    assert seen == [DIGITS_SHAPE]  # the generated batch reached the metric as pixels
    row = result["rows"][0]
    assert np.isfinite(row["fd_classifier"]) and "clip_denoised=False" in row["sampler_settings"]
    cfg = compose_train(
        [f"ckpt={latent_checkpoint}", f"out_dir={tmp_path / 'bpd'}", "device=cpu", "metrics=[bpd]"],
        config_name="evaluate",
    )
    with pytest.raises(UserError, match=r"metrics=\[bpd\] is a likelihood of pixels") as err:
        evaluate(cfg)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------- bad input
def run_train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "diffusion_lab.train", "trainer=cpu", *overrides],
        capture_output=True, text=True, env=cli_env(tmp_path), timeout=300,
    )  # fmt: skip


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_autoencoder_path_is_one_line_naming_the_option(tmp_path):
    proc = run_train(tmp_path, "data=digits", f"autoencoder={tmp_path / 'missing.ckpt'}")
    assert_one_line_error(proc, f"autoencoder='{tmp_path / 'missing.ckpt'}' does not exist")


def test_a_diffusion_checkpoint_is_no_autoencoder(latent_checkpoint):
    with pytest.raises(CheckpointError) as err:
        load_autoencoder(latent_checkpoint)
    assert str(err.value) == (
        f"autoencoder={str(latent_checkpoint)!r} is a diffusion checkpoint, not an autoencoder; pass the "
        "last.ckpt of a `python -m diffusion_lab.train experiment=autoencoder_fmnist` run"
    )


def test_an_autoencoder_does_not_sample(tiny_autoencoder, tmp_path):
    with pytest.raises(CheckpointError) as err:
        sample(compose_train([f"ckpt={tiny_autoencoder}", "device=cpu"], config_name="sample"))
    assert "is an autoencoder (task=autoencoder), which does not sample" in str(err.value)
    assert f"autoencoder={tiny_autoencoder}" in str(err.value) and "\n" not in str(err.value)


def test_latent_experiment_requires_an_autoencoder(tmp_path):
    with pytest.raises(UserError) as err:
        train(small_train_cfg(tmp_path, "experiment=fmnist_latent"))
    assert str(err.value).startswith("autoencoder= is required by this experiment: pass autoencoder=")
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["data=toy2d"], "autoencoder= needs image data; data.name=swiss_roll gives points"),
        (["data=cifar10"], "do not fit this autoencoder: it takes 1 channel(s)"),
        (["task=autoencoder"], "task=autoencoder trains an autoencoder: drop autoencoder="),
    ],
)
def test_autoencoder_option_refuses_what_it_cannot_encode(overrides, match, tiny_autoencoder, tmp_path,
                                                          fake_cifar_root):  # fmt: skip
    extra = [f"data.root={fake_cifar_root}"] if "data=cifar10" in overrides else []
    cfg = compose_train(
        [f"autoencoder={tiny_autoencoder}", f"paths.cache_dir={tmp_path}", *overrides, *extra]
    )
    with pytest.raises(UserError) as err:
        build_datamodule(cfg)
    assert match in str(err.value) and "\n" not in str(err.value)


def test_export_refuses_a_latent_checkpoint(latent_checkpoint, tmp_path):
    from diffusion_lab.export import export

    cfg = compose_train([f"ckpt={latent_checkpoint}", f"out={tmp_path / 'pipe'}"], config_name="export")
    with pytest.raises(UserError, match="DDPMPipeline, which has no autoencoder") as err:
        export(cfg)
    assert "\n" not in str(err.value) and not (tmp_path / "pipe").exists()


# --------------------------------------------------------------------------------------------- the task group
@pytest.mark.parametrize("task", group_options("task"))
def test_every_task_option_fast_dev_runs(task, tmp_path):
    overrides = [f"task={task}", "data=digits", f"paths.cache_dir={tmp_path / 'cache'}"]
    if task == "autoencoder":
        overrides += TINY_AUTOENCODER
    result = train(small_train_cfg(tmp_path / "run", *overrides, fast_dev_run=True))
    assert result["global_step"] == 1 and np.isfinite(result["metrics"]["train/loss"])
    spec = load_checkpoint_spec(Path(result["checkpoint"]))
    assert spec.get("task", "diffusion") == task


def load_checkpoint_spec(path: Path) -> dict:
    from diffusion_lab.build import read_checkpoint
    from diffusion_lab.module import CHECKPOINT_KEY

    return read_checkpoint(path)[CHECKPOINT_KEY]["spec"]


def test_latent_diffusion_with_the_cold_process_is_one_error_line(tiny_autoencoder, tmp_path):
    # edm / flow are refused before this, when composed: they take no schedule.
    cfg = small_train_cfg(
        tmp_path / "run", *latent_overrides(tiny_autoencoder, tmp_path / "cache", "process=cold")
    )
    with pytest.raises(UserError) as err:
        train(cfg)
    assert str(err.value) == (
        "autoencoder= (latent diffusion) runs process=ddpm; process=cold is not supported on latents yet: "
        "drop autoencoder= or use process=ddpm"
    )
