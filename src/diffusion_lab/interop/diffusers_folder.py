"""A checkpoint -> a diffusers pipeline folder, and such a folder -> a checkpoint.

The folder is what ``DDPMPipeline.save_pretrained`` writes and ``from_pretrained`` reads:

    model_index.json                                  DDPMPipeline: unet UNet2DModel, scheduler DDPMScheduler
    unet/config.json, unet/diffusion_pytorch_model.safetensors
    scheduler/scheduler_config.json                   also loadable as DDIMScheduler (and other schedulers)

The EMA weights are exported (those ``sample`` uses). Both directions run the two networks on one random batch
and refuse to finish if they disagree, so a written folder or checkpoint computes what it was made from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from ..build import Parts, build_parts
from ..cli import CONFIG_DIR
from ..errors import UserError
from ..module import CHECKPOINT_KEY
from ..nets.unet import UNet
from .diffusers_scheduler import scheduler_config, spec_parts_from_scheduler
from .diffusers_unet import (
    UNET_TARGETS,
    diffusers_unet_config,
    from_diffusers_state_dict,
    to_diffusers_state_dict,
    unet_kwargs_from_diffusers,
)

__all__ = ["write_pipeline_folder", "checkpoint_from_folder", "max_output_difference", "shipped_option"]

# Our UNet's arguments that come from the data and the variance, not from the model config.
_DATA_ARGS = ("in_channels", "out_channels", "image_size", "num_classes")


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise UserError(
            "format=diffusers needs the diffusers package: pip install 'diffusion_lab[diffusers]'"
        ) from None
    return diffusers


def max_output_difference(ours: UNet, theirs: nn.Module) -> float:
    """max |ours(x, t, y) - theirs(x, t, y)| on one fixed random batch (every label, the null one included)."""
    cfg = ours.config
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    t = torch.tensor([0, 1, 499, 999])
    y = torch.arange(4) % (cfg.num_classes + 1) if cfg.num_classes is not None else None
    with torch.no_grad():
        return (ours.eval()(x, t, y) - theirs.eval()(x, t, class_labels=y).sample).abs().max().item()


def _check_same(ours: UNet, theirs: nn.Module) -> float:
    difference = max_output_difference(ours, theirs)
    if not difference <= 1e-4:  # fp32 rounding differs by ~1e-6; a wrong mapping by the output's own size
        raise RuntimeError(f"the converted network's outputs differ by {difference:.3g}: a conversion bug")
    return difference


# ------------------------------------------------------------------------------------------ export
def _our_unet(parts: Parts, spec: dict) -> UNet:
    if spec.get("latent"):
        raise UserError(
            "format=diffusers writes a DDPMPipeline, which has no autoencoder: this checkpoint diffuses an "
            "autoencoder's latents (autoencoder=), and its samples are decoded by it"
        )
    target = spec["model"].get("_target_")
    if target not in UNET_TARGETS or type(parts.net) is not UNet:
        raise UserError(
            f"format=diffusers exports diffusion_lab's UNet (model=unet_*) only; this checkpoint's network is "
            f"{target}"
        )
    return parts.net


def write_pipeline_folder(parts: Parts, spec: dict, out: Path) -> dict[str, Any]:
    """Write the checkpoint's parts as a DDPMPipeline folder; UserError (before writing) for what does not map."""
    diffusers = _diffusers()
    net = _our_unet(parts, spec)
    unet_config = diffusers_unet_config(net.config)
    clip = spec["sampler"].get("clip_denoised", True)
    scheduler = diffusers.DDPMScheduler(**scheduler_config(parts.diffusion, spec["schedule"], clip))
    unet = diffusers.UNet2DModel(**unet_config)
    unet.load_state_dict(to_diffusers_state_dict(net.state_dict(), net.config), strict=True)
    difference = _check_same(net, unet)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(out), safe_serialization=True)
    return {"out": str(out), "max_abs_difference": difference, "scheduler": dict(scheduler.config)}


# ------------------------------------------------------------------------------------------ import
def _check_folder(src: Path) -> None:
    for need in ("unet/config.json", "scheduler/scheduler_config.json"):
        if not (src / need).is_file():
            raise UserError(
                f"src={str(src)!r} has no {need}; pass a diffusers pipeline folder (model_index.json, unet/, "
                "scheduler/), as DDPMPipeline.save_pretrained writes it"
            )
    name = json.loads((src / "unet/config.json").read_text()).get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        raise UserError(f"src={str(src)!r} holds a {name}; diffusion_lab imports a UNet2DModel only")


def shipped_option(group: str, name: str) -> dict[str, Any]:
    """conf/<group>/<name>.yaml as a spec node (what training with ``<group>=<name>`` stores)."""
    node = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / group / f"{name}.yaml"), resolve=True)
    node.pop("defaults", None)
    return node


def _spec(kwargs: dict[str, Any], scheduler: dict[str, Any]) -> dict[str, Any]:
    """The spec an imported network and scheduler train-and-sample as (data unknown: evaluate needs data=)."""
    learned = scheduler["variance"] == "learned_range"
    model = {"_target_": UNET_TARGETS[0], **{k: v for k, v in kwargs.items() if k not in _DATA_ARGS}}
    size = kwargs["image_size"]
    return {
        "schedule": scheduler["schedule"],
        "prediction": shipped_option("prediction", scheduler["prediction"]),
        "variance": shipped_option("variance", scheduler["variance"]),
        "loss": shipped_option("loss", "hybrid" if learned else "simple"),
        "weighting": shipped_option("weighting", "uniform"),
        "timesteps": shipped_option("timesteps", "uniform"),
        "sampler": {**shipped_option("sampler", "ddpm"), "clip_denoised": scheduler["clip_denoised"]},
        "model": model,
        "data": None,
        "data_shape": [kwargs["in_channels"], size, size],
        "num_classes": kwargs["num_classes"],
        "p_uncond": 0.0,
    }


def _check_channels(kwargs: dict[str, Any], variance: str) -> None:
    factor = 2 if variance == "learned_range" else 1
    if kwargs["out_channels"] != factor * kwargs["in_channels"]:
        raise UserError(
            f"unet/config.json has out_channels={kwargs['out_channels']} but the scheduler's variance_type "
            f"({variance}) needs {factor} x in_channels = {factor * kwargs['in_channels']}"
        )


def checkpoint_from_folder(src: Path) -> tuple[dict[str, Any], float]:
    """(a diffusion_lab checkpoint of a DDPMPipeline folder's UNet and scheduler, the max output difference)."""
    diffusers = _diffusers()
    _check_folder(src)
    unet = diffusers.UNet2DModel.from_pretrained(str(src), subfolder="unet", local_files_only=True)
    scheduler = diffusers.DDPMScheduler.from_pretrained(
        str(src), subfolder="scheduler", local_files_only=True
    )
    kwargs = unet_kwargs_from_diffusers(dict(unet.config))
    parts = spec_parts_from_scheduler(dict(scheduler.config), scheduler.betas.double().tolist())
    _check_channels(kwargs, parts["variance"])
    spec = _spec(kwargs, parts)
    net = build_parts(spec).net
    net.load_state_dict(from_diffusers_state_dict(unet.state_dict(), net.config), strict=True)
    difference = _check_same(net, unet)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    ckpt = {"state_dict": state, "global_step": 0, CHECKPOINT_KEY: {"spec": spec, "imported_from": str(src)}}
    return ckpt, difference
