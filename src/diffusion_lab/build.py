"""The composition root: turns a composed config into built parts. Nothing else imports a concrete class.

The schedule is declared once (``cfg.schedule``) and every part that needs T or the schedule receives the
built object. ``spec`` — the resolved config of every diffusion part and of the network — is stored in each
checkpoint, so sampling and evaluation rebuild exactly what was trained, with no flags to repeat.

The rule (docs/ARCHITECTURE.md): every part is built from its config group's ``_target_``; the diffusion parts
and the network go through ``make_spec`` / ``build_parts`` here, so that their resolved configs travel in each
checkpoint as plain data, while Lightning-side objects (data, callbacks, loggers, trainer, optimizer partials)
are instantiated by ``training.py``. The name registries (``build_schedule("cosine")``, ``SAMPLERS``, ...) are the
library's shorthand for code and tests and for a command's ``sampler=NAME``; they are not used here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .checkpointing import CheckpointError, check_digest, load_checkpoint_file, sidecar_path
from .diffusion import Diffusion, Loss, TimestepSampler
from .errors import UserError, root_cause
from .io import file_sha256
from .latent.decoder import LatentDecoder, warn_unclipped_eps
from .process_parts import fitting_parts
from .samplers import Sampler
from .spec_keys import OPTIONAL_SPEC_KEYS, SPEC_KEYS, task_name

__all__ = [
    "Parts",
    "SPEC_KEYS",
    "build_parts",
    "make_spec",
    "build_module",
    "build_datamodule",
    "load_checkpoint",
    "read_checkpoint",
    "TrainedAutoencoder",
    "load_autoencoder",
    "CheckpointError",
]


@dataclass
class Parts:
    diffusion: Diffusion
    net: nn.Module
    loss: Loss
    timesteps: TimestepSampler
    sampler: Sampler
    decoder: LatentDecoder | None = None  # latent diffusion: the frozen decoder back to pixels (else None)


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def make_spec(cfg: DictConfig, data_shape: tuple[int, ...], num_classes: int | None) -> dict:
    spec = {key: _container(cfg[key]) for key in (*SPEC_KEYS, *OPTIONAL_SPEC_KEYS) if key in cfg}
    spec["data"] = _container(cfg.get("data"))
    spec.update(
        data_shape=list(data_shape), num_classes=num_classes, p_uncond=float(cfg.get("p_uncond", 0.0))
    )
    return spec


def build_parts(spec: dict) -> Parts:
    """Build every diffusion part and the network from a spec (a config or a checkpoint's stored spec)."""
    diffusion, loss, sampler = fitting_parts(spec)
    channels = spec["data_shape"][0]
    out_channels = channels * diffusion.out_channel_factor
    net_kwargs: dict[str, Any] = {"in_channels": channels, "out_channels": out_channels}
    if len(spec["data_shape"]) == 3:
        net_kwargs["image_size"] = spec["data_shape"][-1]
    else:  # vector data (2-D toys): in_channels means the vector length
        net_kwargs = {"in_dim": channels, "out_dim": out_channels}
    if spec.get("num_classes"):
        net_kwargs["num_classes"] = spec["num_classes"]
    net = _build_net(spec, net_kwargs)
    timesteps_cls = get_class(spec["timesteps"]["_target_"])
    # A discrete sampler draws from the process's T timesteps; a continuous one (EDM's σ, a flow's t) has no grid.
    grid = "num_timesteps" in inspect.signature(timesteps_cls).parameters
    timesteps = instantiate(spec["timesteps"], **({"num_timesteps": diffusion.num_timesteps} if grid else {}))
    decoder = build_latent_decoder(spec["latent"]) if spec.get("latent") else None
    if decoder is not None:  # a latent model, built to train or loaded to sample: both warn alike
        warn_unclipped_eps(diffusion)
    return Parts(diffusion, net, loss, timesteps, sampler, decoder)


def _refuses_settings(group: str, name: str, err: BaseException) -> UserError:
    """``<group>=<name> refuses its settings (<why>); fix that <group>.* value``: the part's own words, first
    line only (omegaconf's errors add lines naming the node)."""
    reason = str(err).splitlines()[0]
    return UserError(f"{group}={name} refuses its settings ({reason}); fix that {group}.* value")


def _build_net(spec: dict, net_kwargs: dict[str, Any]) -> nn.Module:
    """The network for the data's shape; a network made for the other kind of data (a UNet on 2-D points, the
    MLP on images) refuses its shape arguments, which becomes one line naming the model and the data."""
    model = str(spec["model"]["_target_"]).rsplit(".", 1)[-1]
    try:
        return instantiate(spec["model"], **net_kwargs)
    except Exception as err:
        cause = root_cause(err)
        if isinstance(cause, ValueError | IndexError) and not isinstance(cause, UserError):
            # e.g. model.channel_mult=[1,abc], model.dropout=1.5: the network's own words, naming no option
            raise _refuses_settings("model", model, cause) from None
        if not (isinstance(cause, TypeError) and any(f"'{k}'" in str(cause) for k in net_kwargs)):
            raise
    kind = "images" if len(spec["data_shape"]) == 3 else "points"
    raise UserError(
        f"model={model} does not take {kind} (data.name={(spec.get('data') or {}).get('name')} gives shape "
        f"{list(spec['data_shape'])}); choose model=mlp for points, a unet_* or dit_* model for images"
    ) from None


def build_module(cfg: DictConfig, data_shape: tuple[int, ...], num_classes: int | None, latent=None):
    """The LightningModule of the run's ``task``: a diffusion model of ``data_shape`` (in the latent space of
    ``latent``, a ``LatentDataModule``, when given) or an autoencoder (``task=autoencoder``)."""
    from .module import DiffusionModule

    if task_name(cfg) == "autoencoder":
        return build_autoencoder_module(cfg, data_shape)
    check_conditioning(cfg, num_classes)
    spec = make_spec(cfg, data_shape, num_classes)
    if latent is not None:
        spec["latent"] = latent.latent_spec()
        if "clip_denoised" in spec["sampler"]:  # stored as it runs: x̂_0 is never clipped on latents
            spec["sampler"]["clip_denoised"] = False
    parts = build_parts(spec)
    optimizer, lr_scheduler = _optimization(cfg)
    return DiffusionModule(
        net=parts.net,
        diffusion=parts.diffusion,
        loss=parts.loss,
        timesteps=parts.timesteps,
        sampler=parts.sampler,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        data_shape=tuple(data_shape),
        num_classes=num_classes,
        p_uncond=float(cfg.get("p_uncond", 0.0)),
        spec=spec,
        compile=cfg.get("compile", False),
        compile_eval=bool(cfg.get("compile_eval", False)),
        compile_scope=str(cfg.get("compile_scope", "net")),
        channels_last=bool(cfg.get("channels_last", False)),
        nonfinite=cfg.get("nonfinite", "skip"),
        decoder=latent.decoder() if latent is not None else None,
    )


def check_conditioning(cfg: DictConfig, num_classes: int | None) -> None:
    """``conditional`` and ``p_uncond`` against the data: a conditional model needs labels, and label dropout
    needs a conditional model (either alone would train an unconditional model without a word)."""
    p_uncond = float(cfg.get("p_uncond", 0.0))
    if cfg.get("conditional") and not num_classes:
        raise UserError(
            f"conditional=true needs labelled data, but data.name={cfg.data.get('name')} has no classes; use "
            "labelled data (e.g. data.name=two_moons for points, data=fashion_mnist for images) or conditional=false"
        )
    if p_uncond and not cfg.get("conditional"):
        raise UserError(
            f"p_uncond={p_uncond} drops labels for classifier-free guidance, but conditional=false: add "
            "conditional=true, or set p_uncond=0"
        )


def _optimization(cfg: DictConfig) -> tuple[Any, Any]:
    """The optimizer and learning-rate schedule factories, tried once on a probe parameter: a setting either
    refuses (``optimizer.betas=[2,0.9]``, ``lr_scheduler.warmup_steps=-1``) fails at start-up in one line, not
    when the Trainer has started."""
    optimizer, lr_scheduler = instantiate(cfg.optimizer), _lr_scheduler(cfg)
    try:
        probe = optimizer(params=[nn.Parameter(torch.zeros(1))])
    except (ValueError, IndexError) as err:  # optimizer.betas=[2,0.9] / optimizer.betas=[0.9]
        name = str(cfg.optimizer.get("_target_", "?")).rsplit(".", 1)[-1].lower()
        raise _refuses_settings("optimizer", name, err) from None
    if lr_scheduler is not None:
        lr_scheduler(optimizer=probe)
    return optimizer, lr_scheduler


def _lr_scheduler(cfg: DictConfig):
    # lr_scheduler=none is `{}`, but an experiment may still set keys of it (e.g. warmup_steps): no _target_,
    # no schedule.
    lr_scheduler = cfg.get("lr_scheduler")
    return instantiate(lr_scheduler) if lr_scheduler and "_target_" in lr_scheduler else None


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", option: str = "ckpt") -> dict:
    """A whole checkpoint written by diffusion_lab (its digest checked, loaded as plain data), or a one-line
    ``CheckpointError`` naming ``option``."""
    from .module import CHECKPOINT_KEY

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{option}={str(path)!r} does not exist; pass the path of a .ckpt file from a training run"
        )
    if check_digest(path) is False:
        raise CheckpointError(
            f"{option}={str(path)!r} is corrupt: its sha256 does not match {sidecar_path(path).name} "
            "(truncated or modified after it was written)"
        )
    try:
        ckpt = load_checkpoint_file(path, map_location=map_location, option=option)
    except CheckpointError:
        raise
    except Exception as err:  # truncated or not a torch file
        raise CheckpointError(
            f"{option}={str(path)!r} cannot be read ({type(err).__name__}): truncated or not a checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "spec" not in ckpt[CHECKPOINT_KEY]:
        raise CheckpointError(
            f"{option}={str(path)!r} was not written by diffusion_lab (no '{CHECKPOINT_KEY}' spec inside); "
            "use a checkpoint from `python -m diffusion_lab.train`"
        )
    return ckpt


def _prefixed(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Parts, dict, dict]:
    """Rebuild the trained parts from a checkpoint: returns (parts with the EMA network loaded, spec, raw ckpt).

    The state dict of our checkpoints holds the EMA weights (Lightning's weight averaging puts the average
    there and the live weights under ``current_model_state``).
    """
    from .module import CHECKPOINT_KEY

    ckpt = read_checkpoint(path, map_location)
    spec = ckpt[CHECKPOINT_KEY]["spec"]
    if task_name(spec) == "autoencoder":
        raise CheckpointError(
            f"ckpt={str(path)!r} is an autoencoder (task=autoencoder), which does not sample; train a diffusion "
            f"model in its latent space with autoencoder={str(path)}"
        )
    parts = build_parts(spec)
    try:
        parts.net.load_state_dict(_prefixed(ckpt["state_dict"], "net."))
        if parts.decoder is not None:
            parts.decoder.load_state_dict(_prefixed(ckpt["state_dict"], "decoder."))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"ckpt={str(path)!r} does not match its stored network spec: {first}") from None
    process_state = ckpt[CHECKPOINT_KEY].get("process_state")
    if process_state:
        parts.diffusion.load_state_dict(process_state)
    parts.net.eval()
    return parts, spec, ckpt


# ------------------------------------------------------------------------------ latent diffusion (Rombach 2022)
def build_datamodule(cfg: DictConfig):
    """The run's data: ``cfg.data`` as configured, or, with ``autoencoder=PATH``, seen through that
    autoencoder's encoder (latents cached under ``paths.cache_dir``/latents)."""
    if not cfg.get("autoencoder"):
        return instantiate(cfg.data)
    from .latent.datamodule import LatentDataModule

    if task_name(cfg) == "autoencoder":
        raise UserError(
            f"autoencoder={cfg.autoencoder} is for a diffusion run in that autoencoder's latent space; "
            "task=autoencoder trains an autoencoder: drop autoencoder="
        )
    cache_dir = Path(cfg.paths.cache_dir) / "latents"
    return LatentDataModule(_container(cfg.data), str(cfg.autoencoder), str(cache_dir))


def build_autoencoder(node: dict, image_shape) -> nn.Module:
    """An (untrained) autoencoder network from its config node, for images of ``image_shape`` (C, H, W)."""
    return instantiate(node, in_channels=int(image_shape[0]))


def build_latent_decoder(latent: dict) -> LatentDecoder:
    """The (untrained) decoder of a latent-diffusion spec, with its scale factor; the weights come from the
    diffusion checkpoint (which stores the frozen decoder)."""
    autoencoder = build_autoencoder(latent["autoencoder"], latent["image_shape"])
    return LatentDecoder(autoencoder.decoder, latent["scale_factor"])


def make_autoencoder_spec(cfg: DictConfig, data_shape: tuple[int, ...]) -> dict:
    return {
        "task": "autoencoder",
        "autoencoder": _container(cfg.task.net),
        "loss": _container(cfg.task.loss),
        "data": _container(cfg.get("data")),
        "data_shape": list(data_shape),
    }


def build_autoencoder_module(cfg: DictConfig, data_shape: tuple[int, ...]):
    from .latent.module import AutoencoderModule

    if len(data_shape) != 3:
        raise UserError(f"task=autoencoder needs image data; data.name={cfg.data.name} gives points")
    spec = make_autoencoder_spec(cfg, data_shape)
    net = build_autoencoder(spec["autoencoder"], data_shape)
    try:
        net.latent_shape(tuple(data_shape))
    except ValueError as err:
        raise UserError(f"task.net: {err}") from None
    optimizer, lr_scheduler = _optimization(cfg)
    return AutoencoderModule(
        net=net,
        loss=instantiate(spec["loss"]),
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        data_shape=tuple(data_shape),
        spec=spec,
        nonfinite=cfg.get("nonfinite", "skip"),
    )


@dataclass
class TrainedAutoencoder:
    """A trained autoencoder loaded from its checkpoint: the frozen network (EMA weights), its spec, and the
    checkpoint's path and sha256 (which key the latent cache)."""

    net: nn.Module
    spec: dict
    sha256: str
    path: str


def load_autoencoder(path: str | Path) -> TrainedAutoencoder:
    """The autoencoder of ``autoencoder=PATH``; a one-line ``CheckpointError`` naming the option otherwise."""
    from .module import CHECKPOINT_KEY

    ckpt = read_checkpoint(path, option="autoencoder")
    spec = ckpt[CHECKPOINT_KEY]["spec"]
    if task_name(spec) != "autoencoder":
        raise CheckpointError(
            f"autoencoder={str(path)!r} is a diffusion checkpoint, not an autoencoder; pass the last.ckpt of a "
            "`python -m diffusion_lab.train experiment=autoencoder_fmnist` run"
        )
    net = build_autoencoder(spec["autoencoder"], spec["data_shape"])
    try:
        net.load_state_dict(_prefixed(ckpt["state_dict"], "net."))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"autoencoder={str(path)!r} does not match its stored spec: {first}") from None
    net.eval().requires_grad_(False)
    return TrainedAutoencoder(net, spec, file_sha256(path), str(path))
