"""diffusers interop: ``export format=diffusers`` writes a DDPMPipeline folder that computes what the checkpoint
computes, and ``import_model`` turns such a folder (ours or diffusers' own) back into a checkpoint.

Networks are tiny and every weight is random (the zero-initialised layers too), so that a wrong key, a
transposed head or a swapped sin/cos would change the output at full size. Nothing is downloaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from hydra.utils import instantiate
from torch import nn

from conftest import cli_env, compose_train, small_train_cfg
from diffusion_lab.build import build_parts, load_checkpoint
from diffusion_lab.checkpointing import load_checkpoint_file
from diffusion_lab.diffusion import Diffusion, build_schedule
from diffusion_lab.errors import UserError
from diffusion_lab.export import export
from diffusion_lab.import_model import import_model
from diffusion_lab.interop.diffusers_folder import shipped_option
from diffusion_lab.interop.diffusers_scheduler import scheduler_config, spec_parts_from_scheduler
from diffusion_lab.interop.diffusers_unet import (
    diffusers_unet_config,
    from_diffusers_state_dict,
    to_diffusers_state_dict,
    unet_kwargs_from_diffusers,
)
from diffusion_lab.module import CHECKPOINT_KEY
from diffusion_lab.nets import UNet
from diffusion_lab.sample import sample
from diffusion_lab.samplers import DDIMSampler, DDPMSampler
from diffusion_lab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

T = 50  # the tiny training run's schedule.num_timesteps (conftest.SMALL_RUN)
# Two fp32 networks that compute the same function differ by rounding only: ~1e-6 on outputs of size ~1.
NET_TOL = {"rtol": 1e-5, "atol": 1e-5}

# Our UNet configs that exercise every mapped feature: attention at one or all levels, one or several heads,
# AdaGN, residual resampling, class labels, a learned-variance output, diffusers' GroupNorm epsilon.
UNETS = {
    "ho": dict(
        in_channels=3, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(8,),
        image_size=16, groups=4, dropout=0.0,
    ),
    "adm": dict(
        in_channels=2, out_channels=4, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(16, 8), image_size=16, groups=4, num_head_channels=4, use_scale_shift_norm=True,
        resblock_updown=True, num_classes=3, dropout=0.0,
    ),
    "heads": dict(
        in_channels=1, base_channels=8, channel_mult=(1, 1), num_res_blocks=1, attention_resolutions=(12, 6),
        image_size=12, groups=2, num_heads=2, dropout=0.0, norm_eps=1e-5,
    ),
}  # fmt: skip


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return net.eval()


def batch(cfg, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    y = torch.tensor([0, 2, cfg.num_classes]) if cfg.num_classes is not None else None
    return x, torch.tensor([0, 17, 999]), y


# ------------------------------------------------------------------------------------------ the network
@pytest.mark.parametrize("name", UNETS)
def test_unet2dmodel_computes_our_unet_and_back(name):
    ours = randomize(UNet(**UNETS[name]))
    theirs = UNet2DModel(**diffusers_unet_config(ours.config)).eval()
    theirs.load_state_dict(to_diffusers_state_dict(ours.state_dict(), ours.config), strict=True)
    x, t, y = batch(ours.config)
    with torch.no_grad():
        expected = ours(x, t, y)
        assert expected.abs().mean() > 0.1  # a real signal, not the zero-initialised output layer
        torch.testing.assert_close(theirs(x, t, class_labels=y).sample, expected, **NET_TOL)

    back = UNet(**unet_kwargs_from_diffusers(dict(theirs.config))).eval()
    back.load_state_dict(from_diffusers_state_dict(theirs.state_dict(), back.config), strict=True)
    with torch.no_grad():
        assert torch.equal(back(x, t, y), expected)  # the same tensors in the same layers: bit for bit


def test_default_unet_is_the_ddpm_cifar_unet2dmodel():
    """Ho et al.'s CIFAR-10 network (model=unet_ddpm_cifar) maps to the UNet2DModel layout of the DDPM port."""
    config = diffusers_unet_config(UNet().config)
    assert config["down_block_types"] == ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"]
    assert config["up_block_types"] == ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    assert config["block_out_channels"] == [128, 256, 256, 256] and config["attention_head_dim"] is None
    assert (config["flip_sin_to_cos"], config["freq_shift"], config["norm_eps"]) == (True, 0, 1e-6)
    assert sum(p.numel() for p in UNet2DModel(**config).parameters()) == sum(
        p.numel() for p in UNet().parameters()
    )


# ------------------------------------------------------------------------------------------ the scheduler
SCHEDULES = [
    ("linear", 1000, {}, "linear"),
    ("linear", T, {}, "linear"),
    ("quadratic", T, {}, "scaled_linear"),
    ("cosine", 1000, {}, "squaredcos_cap_v2"),
    ("cosine", T, {"s": 0.02}, None),  # not diffusers' cosine: exported as trained_betas
    ("sigmoid", T, {}, None),
]


@pytest.mark.parametrize("name,steps,kwargs,beta_schedule", SCHEDULES)
def test_scheduler_config_round_trip(name, steps, kwargs, beta_schedule):
    schedule = build_schedule(name, steps, **kwargs)
    diffusion = Diffusion(schedule, "v", "fixed_large")
    config = scheduler_config(diffusion, kwargs, clip_denoised=False)
    if beta_schedule is None:
        assert len(config["trained_betas"]) == steps
    else:
        assert config["beta_schedule"] == beta_schedule and "trained_betas" not in config
    assert (config["prediction_type"], config["variance_type"], config["clip_sample"]) == (
        "v_prediction", "fixed_large", False,
    )  # fmt: skip
    scheduler = DDPMScheduler(**config)
    # diffusers keeps float32 tables: our float64 betas rounded once, up to an ulp or two of float32
    torch.testing.assert_close(scheduler.betas, schedule.betas.float(), rtol=1e-6, atol=0)

    back = spec_parts_from_scheduler(dict(scheduler.config), scheduler.betas.double().tolist())
    assert (back["prediction"], back["variance"], back["clip_denoised"]) == ("v", "fixed_large", False)
    torch.testing.assert_close(instantiate(back["schedule"]).betas, schedule.betas, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("trained")
    cfg = small_train_cfg(out, "schedule=cosine", "trainer.max_steps=2", "final_samples=0")
    return Path(train(cfg)["checkpoint"])


def variant(trained: Path, path: Path, model: dict | None = None, **parts: dict) -> Path:
    """The trained checkpoint with some spec nodes replaced (``model``: a whole node with its ``_target_``, else
    keys to change) and every network weight random."""
    ckpt = load_checkpoint_file(trained)
    spec = ckpt[CHECKPOINT_KEY]["spec"]
    spec.update(parts)
    model = model or {}
    spec["model"] = model if "_target_" in model else {**spec["model"], **model}
    net = randomize(build_parts(spec).net)
    ckpt["state_dict"] = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save(ckpt, path)
    return path


def option(group: str, name: str, **kwargs) -> dict:
    return {**shipped_option(group, name), **kwargs}


def export_cfg(ckpt: Path, out: Path, *overrides: str):
    return compose_train([f"ckpt_path={ckpt}", f"out={out}", *overrides], config_name="export")


def test_export_writes_a_pipeline_folder(trained, tmp_path):
    result = export(compose_train([f"ckpt={trained}", f"out={tmp_path / 'p'}"], config_name="export"))
    out = Path(result["out"])
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == [
        "diffusers",
        "DDPMScheduler",
    ]
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    parts, spec, _ = load_checkpoint(trained)
    unet = UNet2DModel.from_pretrained(out, subfolder="unet")
    x, t, _ = batch(parts.net.config)
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t).sample, parts.net(x, t), **NET_TOL)
    config = DDPMScheduler.from_pretrained(out, subfolder="scheduler").config
    assert (config.num_train_timesteps, config.beta_schedule) == (T, "squaredcos_cap_v2")
    assert (config.prediction_type, config.variance_type, config.clip_sample) == (
        "epsilon",
        "fixed_small",
        True,
    )
    assert DDIMScheduler.from_pretrained(out, subfolder="scheduler").config.prediction_type == "epsilon"


def ours_then_pipeline(trained, tmp_path, our_sampler, run_pipeline, **parts):
    """(our sampler's images, the diffusers pipeline's) from one seed, both in [0, 1], NCHW."""
    ckpt = variant(trained, tmp_path / "variant.ckpt", **parts)
    export(export_cfg(ckpt, tmp_path / "pipeline"))
    loaded, spec, _ = load_checkpoint(ckpt)
    gen = torch.Generator().manual_seed(7)
    noise = torch.randn(
        (2, *spec["data_shape"]), generator=gen
    )  # what sample.py and the pipelines draw first
    x = our_sampler.sample(loaded.diffusion, loaded.net, noise.shape, noise=noise, generator=gen)
    theirs = run_pipeline(tmp_path / "pipeline", torch.Generator().manual_seed(7))
    return (x / 2 + 0.5).clamp(0, 1), theirs


# The same noise, the same network, the same posterior; diffusers computes its coefficients in float32 from a
# float32 cumprod, ours in float64 rounded once: ~1e-6 per step, carried through T = 50 steps.
SAMPLE_TOL = {"rtol": 0, "atol": 3e-5}

DDPM_VARIANTS = {
    "cosine-eps-small-clip": dict(schedule=option("schedule", "cosine", num_timesteps=T)),
    "linear-v-large": dict(
        schedule=option("schedule", "linear", num_timesteps=T),
        prediction=option("prediction", "v"),
        variance=option("variance", "fixed_large"),
        sampler=option("sampler", "ddpm", clip_denoised=False),
    ),
    "quadratic-x0-learned_range": dict(
        schedule=option("schedule", "quadratic", num_timesteps=T),
        prediction=option("prediction", "x0"),
        variance=option("variance", "learned_range"),
        loss=option("loss", "hybrid"),
    ),
    "sigmoid-eps-small": dict(schedule=option("schedule", "sigmoid", num_timesteps=T)),
}


@pytest.mark.parametrize("name", DDPM_VARIANTS)
def test_ddpm_pipeline_samples_what_our_ddpm_sampler_samples(trained, tmp_path, name):
    parts = DDPM_VARIANTS[name]
    clip = parts.get("sampler", {}).get("clip_denoised", True)

    def pipeline(folder, gen):
        pipe = DDPMPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        return pipe(batch_size=2, generator=gen, num_inference_steps=T, output_type="pt").images

    ours, theirs = ours_then_pipeline(trained, tmp_path, DDPMSampler(clip_denoised=clip), pipeline, **parts)
    assert ours.std() > 0.05  # samples, not a constant image
    torch.testing.assert_close(theirs, ours, **SAMPLE_TOL)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_scheduler_samples_what_our_ddim_sampler_samples(trained, tmp_path, eta):
    """Our "ddim10" steps (stride 5 from 0) are DDIMScheduler's "leading" spacing; DDIM re-derives ε̂ from the
    clipped x̂_0, as diffusers does with use_clipped_model_output."""
    parts = dict(schedule=option("schedule", "linear", num_timesteps=T), prediction=option("prediction", "v"))

    def pipeline(folder, gen):
        scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
        pipe = DDIMPipeline(UNet2DModel.from_pretrained(folder, subfolder="unet"), scheduler)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(
            2, gen, eta=eta, num_inference_steps=10, use_clipped_model_output=True, output_type="pt"
        )
        return images.images

    sampler = DDIMSampler(steps="ddim10", eta=eta)
    ours, theirs = ours_then_pipeline(trained, tmp_path, sampler, pipeline, **parts)
    assert ours.std() > 0.05
    torch.testing.assert_close(theirs, ours, **SAMPLE_TOL)


# ------------------------------------------------------------------------------------------ import
def diffusers_folder(path: Path, scheduler: DDPMScheduler, **unet_config) -> tuple[Path, UNet2DModel]:
    """A pipeline folder as diffusers' own training script would write it (its UNet2DModel defaults)."""
    unet = randomize(UNet2DModel(**unet_config))
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(path)
    return path, unet


FOREIGN_UNET = dict(
    sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 16, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
)  # fmt: skip  # attention_head_dim=8 (several heads) and norm_eps=1e-5: diffusers' defaults


def import_cfg(src: Path, out: Path, *overrides: str):
    return compose_train([f"src={src}", f"out={out}", *overrides], config_name="import_model")


def test_import_diffusers_folder_then_sample(tmp_path):
    scheduler = DDPMScheduler(
        num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=1e-4, beta_end=0.5,
        prediction_type="v_prediction", variance_type="fixed_large", clip_sample=False,
    )  # fmt: skip
    src, unet = diffusers_folder(tmp_path / "hub", scheduler, **FOREIGN_UNET)
    result = import_model(import_cfg(src, tmp_path / "imported.ckpt"))

    parts, spec, _ = load_checkpoint(result["checkpoint"])
    assert spec["schedule"]["_target_"].endswith("QuadraticSchedule")
    assert spec["prediction"]["_target_"].endswith("VPrediction")
    assert spec["variance"]["_target_"].endswith("FixedLargeVariance")
    assert spec["sampler"]["clip_denoised"] is False and spec["data_shape"] == [1, 16, 16]
    torch.testing.assert_close(parts.diffusion.schedule.betas.float(), scheduler.betas, rtol=1e-6, atol=0)
    x, t, _ = batch(parts.net.config)
    with torch.no_grad():
        torch.testing.assert_close(parts.net(x, t), unet(x, t).sample, **NET_TOL)

    cfg = compose_train(
        [f"ckpt_path={result['checkpoint']}", f"out_dir={tmp_path / 's'}", "n=2", "steps=3", "device=cpu"]
        + ["progress=false"],
        config_name="sample",
    )
    assert Path(sample(cfg)["samples_npz"]).is_file()


def test_export_then_import_is_the_same_checkpoint(trained, tmp_path):
    ckpt = variant(trained, tmp_path / "cond.ckpt", model=dict(num_heads=2), num_classes=3)
    export(export_cfg(ckpt, tmp_path / "pipeline"))
    back = import_model(import_cfg(tmp_path / "pipeline", tmp_path / "back.ckpt"))
    (ours, spec, _), (again, spec_again, _) = load_checkpoint(ckpt), load_checkpoint(back["checkpoint"])
    for key in ("prediction", "variance", "data_shape", "num_classes"):
        assert spec_again[key] == spec[key], key
    assert torch.equal(
        again.diffusion.schedule.betas, ours.diffusion.schedule.betas
    )  # CosineSchedule(T) again
    x, t, y = batch(ours.net.config)
    with torch.no_grad():
        assert torch.equal(again.net(x, t, y), ours.net(x, t, y))


# ------------------------------------------------------------------------------------------ refusals
def test_export_refusals(trained, tmp_path):
    cases = [
        (
            dict(model={"_target_": "diffusion_lab.nets.DiT", "hidden_size": 32, "depth": 1, "num_heads": 2,
                        "patch_size": 4}),
            "format=diffusers exports diffusion_lab's UNet (model=unet_*) only; this checkpoint's network is "
            "diffusion_lab.nets.DiT",
        ),
        (
            dict(prediction=option("prediction", "mean")),
            "prediction=mean has no diffusers prediction_type; format=diffusers exports prediction=eps|v|x0",
        ),
        (
            dict(variance=option("variance", "learned"), loss=option("loss", "hybrid")),
            "variance=learned has no diffusers variance_type (diffusers' 'learned' reads the network's output as "
            "σ², ours as log σ²); format=diffusers exports variance=fixed_small|fixed_large|learned_range",
        ),
        (
            dict(model={"channel_mult": [2, 2]}),
            "model.channel_mult=[2, 2] starts with 2; UNet2DModel's first level keeps conv_in's width, so "
            "format=diffusers needs channel_mult[0] == 1",
        ),
        (
            dict(model={"num_heads": 4, "attention_resolutions": [28]}),
            "model.num_heads=4 gives attention heads of widths [2, 4] at the attention widths [8, 16]; UNet2DModel "
            "has one attention_head_dim: use model.num_head_channels=<width> or attention at levels of one width",
        ),
    ]  # fmt: skip
    for i, (parts, message) in enumerate(cases):
        ckpt = variant(trained, tmp_path / f"{i}.ckpt", **parts)
        with pytest.raises(UserError) as err:
            export(export_cfg(ckpt, tmp_path / f"out{i}"))
        assert str(err.value) == message
        assert not (tmp_path / f"out{i}").exists()  # refused before anything is written

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(
        UserError, match="^out='.*full' exists and is not empty; pass overwrite=true or another"
    ):
        export(export_cfg(trained, tmp_path / "full"))
    with pytest.raises(UserError, match="^format='onnx' is unknown; choose one of: diffusers$"):
        export(export_cfg(trained, tmp_path / "o", "format=onnx"))


def test_import_refusals(tmp_path):
    plain = DDPMScheduler(num_train_timesteps=T)
    google, _ = diffusers_folder(tmp_path / "g", plain, **FOREIGN_UNET, flip_sin_to_cos=False, freq_shift=1)
    learned, _ = diffusers_folder(tmp_path / "l", DDPMScheduler(variance_type="learned"), **FOREIGN_UNET)
    cases = [
        (google, "unet/config.json has flip_sin_to_cos=False; diffusion_lab's UNet computes only flip_sin_to_cos=True"),
        (learned, "scheduler/scheduler_config.json has variance_type='learned'; diffusion_lab reads "
                  "['fixed_large', 'fixed_small', 'learned_range']"),
        (tmp_path, f"src={str(tmp_path)!r} has no unet/config.json; pass a diffusers pipeline folder "
                   "(model_index.json, unet/, scheduler/), as DDPMPipeline.save_pretrained writes it"),
    ]  # fmt: skip
    for src, message in cases:
        with pytest.raises(UserError) as err:
            import_model(import_cfg(src, tmp_path / "x.ckpt"))
        assert str(err.value) == message
    assert not (tmp_path / "x.ckpt").exists()


def test_refusal_on_the_command_line_is_one_line(trained, tmp_path):
    ckpt = variant(trained, tmp_path / "learned.ckpt", variance=option("variance", "learned"),
                   loss=option("loss", "hybrid"))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_lab.export", f"ckpt={ckpt}", f"out={tmp_path / 'out'}"],
        cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: variance=learned has no diffusers variance_type")
