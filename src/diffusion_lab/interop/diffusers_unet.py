"""Our UNet (``nets/unet.py``) <-> diffusers' ``UNet2DModel``: the config and the state-dict keys, both ways.

UNet2DModel expresses our UNet exactly when the first level keeps conv_in's width (``channel_mult[0] == 1``:
diffusers' conv_in, time embedding and output norm all take ``block_out_channels[0]``) and every attention
layer has the same head width (UNet2DModel takes one ``attention_head_dim``). The pieces correspond one to one:

    ours                                  UNet2DModel
    timestep_embedding [cos, sin], freqs  Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)
      max_period ** (-i / half)             (the same frequencies: exp(-ln(max_period) * i / (half - 0)))
    time_embed.0 / .2                     time_embedding.linear_1 / linear_2
    label_embed (num_classes + 1 rows)    class_embedding (num_class_embeds = num_classes + 1; the last row is
                                          the null label, which UNet2DModel must be given explicitly)
    ResBlock h + emb | AdaGN              ResnetBlock2D time_embedding_norm "default" | "scale_shift"
    ResBlock norm1 conv1 emb_proj norm2   norm1 conv1 time_emb_proj norm2 conv2 conv_shortcut
      conv2 skip
    AttentionBlock norm, qkv (fused 1x1   Attention group_norm, to_q / to_k / to_v (Linear), to_out.0
      conv, rows [q | k | v], each          (heads split the channels the same way, scale 1/sqrt(head width))
      [head 0 | head 1 | ...]), proj_out
    Downsample (3x3 stride-2 conv, pad 1) Downsample2D(use_conv, padding=1) in down_blocks.i.downsamplers.0
    Upsample (nearest x2 + 3x3 conv)      Upsample2D(use_conv) in up_blocks.i.upsamplers.0
    ResBlock(down/up) (resblock_updown)   ResnetBlock2D(down/up) ("ResnetDownsampleBlock2D",
                                          "ResnetUpsampleBlock2D", downsample_type / upsample_type "resnet")
    mid: ResBlock, Attention, ResBlock    UNetMidBlock2D: resnets.0, attentions.0, resnets.1
    norm_out, conv_out                    conv_norm_out, conv_out

The functions here work on plain dicts and tensors; nothing imports diffusers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError
from ..nets.unet import UNetConfig

__all__ = [
    "UNET_TARGETS",
    "diffusers_unet_config",
    "unet_kwargs_from_diffusers",
    "to_diffusers_state_dict",
    "from_diffusers_state_dict",
]

UNET_TARGETS = ("diffusion_lab.nets.UNet", "diffusion_lab.nets.unet.UNet")

# ResBlock's layers and their ResnetBlock2D names.
_RES_LAYERS = (
    ("norm1", "norm1"),
    ("conv1", "conv1"),
    ("emb_proj", "time_emb_proj"),
    ("norm2", "norm2"),
    ("conv2", "conv2"),
    ("skip", "conv_shortcut"),
)


# ------------------------------------------------------------------------------------------ our config -> theirs
def _attention_levels(cfg: UNetConfig) -> list[bool]:
    """Whether each level (0 = full resolution) has attention after its res blocks."""
    return [cfg.image_size // 2**level in cfg.attention_resolutions for level in range(len(cfg.channel_mult))]


def _attention_widths(cfg: UNetConfig) -> set[int]:
    """The channel counts of every attention layer: the levels that have one and the middle block."""
    widths = {cfg.base_channels * m for m, a in zip(cfg.channel_mult, _attention_levels(cfg)) if a}
    return widths | {cfg.base_channels * cfg.channel_mult[-1]}


def _head_width(cfg: UNetConfig) -> int | None:
    """UNet2DModel's ``attention_head_dim``: None for one head everywhere, else the one head width."""
    widths = _attention_widths(cfg)

    def heads(c: int) -> int:
        return c // cfg.num_head_channels if cfg.num_head_channels != -1 else cfg.num_heads

    if all(heads(c) == 1 for c in widths):
        return None
    head_widths = {c // heads(c) for c in widths}
    if len(head_widths) != 1:
        raise UserError(
            f"model.num_heads={cfg.num_heads} gives attention heads of widths {sorted(head_widths)} at the "
            f"attention widths {sorted(widths)}; UNet2DModel has one attention_head_dim: use "
            "model.num_head_channels=<width> or attention at levels of one width"
        )
    return head_widths.pop()


def _check_first_level(cfg: UNetConfig) -> None:
    if cfg.channel_mult[0] != 1:
        raise UserError(
            f"model.channel_mult={list(cfg.channel_mult)} starts with {cfg.channel_mult[0]}; UNet2DModel's "
            "first level keeps conv_in's width, so format=diffusers needs channel_mult[0] == 1"
        )


def _block_types(attention: list[bool], resblock_updown: bool) -> tuple[list[str], list[str]]:
    """UNet2DModel's down and up block types for attention at these levels."""
    plain_down = "ResnetDownsampleBlock2D" if resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if resblock_updown else "UpBlock2D"
    down = ["AttnDownBlock2D" if a else plain_down for a in attention]
    up = ["AttnUpBlock2D" if a else plain_up for a in reversed(attention)]
    return down, up


def diffusers_unet_config(cfg: UNetConfig) -> dict[str, Any]:
    """The ``UNet2DModel(**config)`` that computes exactly what ``UNet(cfg)`` computes (UserError if none)."""
    _check_first_level(cfg)
    down, up = _block_types(_attention_levels(cfg), cfg.resblock_updown)
    resample = "resnet" if cfg.resblock_updown else "conv"
    return {
        "sample_size": cfg.image_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": down,
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": up,
        "block_out_channels": [cfg.base_channels * m for m in cfg.channel_mult],
        "layers_per_block": cfg.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": resample,
        "upsample_type": resample,
        "dropout": cfg.dropout,
        "act_fn": "silu",
        "attention_head_dim": _head_width(cfg),
        "norm_num_groups": cfg.groups,
        "attn_norm_num_groups": cfg.groups,
        "norm_eps": cfg.norm_eps,
        "resnet_time_scale_shift": "scale_shift" if cfg.use_scale_shift_norm else "default",
        "add_attention": True,
        "class_embed_type": None,
        "num_class_embeds": cfg.num_classes + 1 if cfg.num_classes is not None else None,
    }


# ------------------------------------------------------------------------------------------ their config -> ours
# UNet2DModel settings our UNet has no counterpart for: the value it must have.
_FIXED = {
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_type": "UNetMidBlock2D",
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "act_fn": "silu",
    "add_attention": True,
    "class_embed_type": None,
}


def _check_fixed(config: dict) -> None:
    for key, wanted in _FIXED.items():
        if config.get(key, wanted) != wanted:
            raise UserError(
                f"unet/config.json has {key}={config[key]!r}; diffusion_lab's UNet computes only {key}={wanted!r}"
            )
    ch = config["block_out_channels"][0]
    if config.get("time_embedding_dim") not in (None, 4 * ch):
        raise UserError(
            f"unet/config.json has time_embedding_dim={config['time_embedding_dim']}; diffusion_lab's UNet "
            f"uses 4 x block_out_channels[0] = {4 * ch}"
        )


def _levels_from_block_types(config: dict) -> tuple[list[bool], bool]:
    """(attention at each level, resblock_updown) read from the down and up block types, which must mirror."""
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    attention = [t == "AttnDownBlock2D" for t in down]
    for updown in (False, True):
        kind = "resnet" if updown else "conv"
        # an attention block resamples unless it is the last level down (the first level up)
        down_ok = not any(attention[:-1]) or config.get("downsample_type", "conv") == kind
        up_ok = not any(attention[1:]) or config.get("upsample_type", "conv") == kind
        if _block_types(attention, updown) == (down, up) and down_ok and up_ok:
            return attention, updown
    raise UserError(
        f"unet/config.json has down_block_types={down} and up_block_types={up}; diffusion_lab's UNet takes "
        "DownBlock2D / AttnDownBlock2D (or ResnetDownsampleBlock2D with downsample_type 'resnet') mirrored "
        "by UpBlock2D / AttnUpBlock2D (ResnetUpsampleBlock2D)"
    )


def _channel_mult(config: dict) -> list[int]:
    widths = list(config["block_out_channels"])
    if any(c % widths[0] for c in widths):
        raise UserError(
            f"unet/config.json has block_out_channels={widths}; diffusion_lab's UNet needs multiples of the first"
        )
    return [c // widths[0] for c in widths]


def _image_size(config: dict) -> int:
    size = config.get("sample_size")
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise UserError(f"unet/config.json has sample_size={list(size)}; diffusion_lab's UNet is square")
        size = size[0]
    if not isinstance(size, int):
        raise UserError(f"unet/config.json has sample_size={size!r}; diffusion_lab needs the image size")
    return size


def _norm_groups(config: dict) -> int:
    groups = config["norm_num_groups"]
    attn_groups = config.get("attn_norm_num_groups")
    scale_shift = config.get("resnet_time_scale_shift") == "scale_shift"
    if attn_groups not in ((groups,) if scale_shift else (None, groups)):
        raise UserError(
            f"unet/config.json has attn_norm_num_groups={attn_groups!r}; diffusion_lab's UNet normalises every "
            f"attention input with norm_num_groups={groups} groups"
        )
    return groups


def _scale_shift(config: dict) -> bool:
    shift = config.get("resnet_time_scale_shift", "default")
    if shift not in ("default", "scale_shift"):
        raise UserError(
            f"unet/config.json has resnet_time_scale_shift={shift!r}; diffusion_lab's UNet has 'default' "
            "(use_scale_shift_norm=false) and 'scale_shift' (true)"
        )
    return shift == "scale_shift"


def unet_kwargs_from_diffusers(config: dict) -> dict[str, Any]:
    """Our ``UNet(**kwargs)`` computing exactly what ``UNet2DModel(**config)`` computes (UserError if none).

    ``config`` is a complete UNet2DModel config (``model.config`` of a loaded model: defaults filled in)."""
    _check_fixed(config)
    attention, updown = _levels_from_block_types(config)
    size = _image_size(config)
    head_width = config.get("attention_head_dim")
    classes = config.get("num_class_embeds")
    kwargs = {
        "in_channels": config["in_channels"],
        "out_channels": config["out_channels"],
        "base_channels": config["block_out_channels"][0],
        "channel_mult": _channel_mult(config),
        "num_res_blocks": config["layers_per_block"],
        "attention_resolutions": [size // 2**level for level, a in enumerate(attention) if a],
        "image_size": size,
        "dropout": config.get("dropout", 0.0),
        "num_heads": 1,
        "num_head_channels": -1 if head_width is None else head_width,
        "use_scale_shift_norm": _scale_shift(config),
        "num_classes": classes - 1 if classes is not None else None,
        "resblock_updown": updown,
        "groups": _norm_groups(config),
        "norm_eps": config["norm_eps"],
    }
    _check_heads(kwargs, head_width)
    return kwargs


def _check_heads(kwargs: dict, head_width: int | None) -> None:
    """UNet2DModel gives a width-c attention c // head_width heads of head_width each: c must divide."""
    if head_width is None:
        return
    bad = sorted(c for c in _attention_widths(UNetConfig(**kwargs)) if c % head_width)
    if bad:
        raise UserError(
            f"unet/config.json has attention_head_dim={head_width}, which does not divide the widths {bad}"
        )


# ------------------------------------------------------------------------------------------ state-dict keys
def _down_layers(cfg: UNetConfig) -> Iterator[tuple[str, str, str]]:
    """(our module, their module, kind) along the down path; kind is 'res', 'attn' or 'layer'."""
    index = 0
    levels = _attention_levels(cfg)
    for level, has_attention in enumerate(levels):
        theirs = f"down_blocks.{level}"
        for j in range(cfg.num_res_blocks):
            yield f"down.{index}.0", f"{theirs}.resnets.{j}", "res"
            if has_attention:
                yield f"down.{index}.1", f"{theirs}.attentions.{j}", "attn"
            index += 1
        if level != len(levels) - 1:
            kind = "res" if cfg.resblock_updown else "layer"
            yield f"down.{index}.0", f"{theirs}.downsamplers.0", kind
            index += 1


def _up_layers(cfg: UNetConfig) -> Iterator[tuple[str, str, str]]:
    index = 0
    levels = _attention_levels(cfg)
    for block, level in enumerate(reversed(range(len(levels)))):
        theirs = f"up_blocks.{block}"
        for j in range(cfg.num_res_blocks + 1):
            yield f"up.{index}.0", f"{theirs}.resnets.{j}", "res"
            position = 1
            if levels[level]:
                yield f"up.{index}.1", f"{theirs}.attentions.{j}", "attn"
                position = 2
            if level != 0 and j == cfg.num_res_blocks:
                kind = "res" if cfg.resblock_updown else "layer"
                yield f"up.{index}.{position}", f"{theirs}.upsamplers.0", kind
            index += 1


def _layers(cfg: UNetConfig) -> Iterator[tuple[str, str, str]]:
    yield "conv_in", "conv_in", "layer"
    yield "time_embed.0", "time_embedding.linear_1", "layer"
    yield "time_embed.2", "time_embedding.linear_2", "layer"
    if cfg.num_classes is not None:
        yield "label_embed", "class_embedding", "layer"
    yield from _down_layers(cfg)
    yield "mid.0", "mid_block.resnets.0", "res"
    yield "mid.1", "mid_block.attentions.0", "attn"
    yield "mid.2", "mid_block.resnets.1", "res"
    yield from _up_layers(cfg)
    yield "norm_out", "conv_norm_out", "layer"
    yield "conv_out", "conv_out", "layer"


def _renames(cfg: UNetConfig) -> Iterator[tuple[str, str]]:
    """(our name, their name) of every parameter-holding module whose tensors keep their shapes."""
    for ours, theirs, kind in _layers(cfg):
        if kind == "res":
            yield from ((f"{ours}.{a}", f"{theirs}.{b}") for a, b in _RES_LAYERS)
        elif kind == "attn":
            yield f"{ours}.norm", f"{theirs}.group_norm"
        elif "samplers" in theirs:  # Downsample / Upsample: the conv inside, named conv on both sides
            yield f"{ours}.conv", f"{theirs}.conv"
        else:
            yield ours, theirs


def _attentions(cfg: UNetConfig) -> Iterator[tuple[str, str]]:
    return ((ours, theirs) for ours, theirs, kind in _layers(cfg) if kind == "attn")


def _move(state: dict[str, Tensor], renames: Iterator[tuple[str, str]]) -> dict[str, Tensor]:
    out = {}
    for src, dst in renames:
        for leaf in ("weight", "bias"):
            if f"{src}.{leaf}" in state:
                out[f"{dst}.{leaf}"] = state[f"{src}.{leaf}"]
    return out


def _check_all_moved(state: dict[str, Tensor], moved: set[str], side: str) -> None:
    left = sorted(set(state) - moved)
    if left:
        raise ValueError(f"{side} tensors with no counterpart: {left[:5]}")


def _as_linear(tensor: Tensor) -> Tensor:
    """A 1x1 conv's weight (C_out, C_in, 1, 1) as a Linear's (C_out, C_in); a bias unchanged."""
    return tensor.reshape(tensor.shape[:2]) if tensor.ndim == 4 else tensor


def to_diffusers_state_dict(state: dict[str, Tensor], cfg: UNetConfig) -> dict[str, Tensor]:
    """Our UNet's state dict as UNet2DModel's (for ``diffusers_unet_config(cfg)``)."""
    renames = list(_renames(cfg))
    out = _move(state, iter(renames))
    moved = {f"{a}.{leaf}" for a, _ in renames for leaf in ("weight", "bias")}
    for ours, theirs in _attentions(cfg):
        for leaf in ("weight", "bias"):
            qkv = _as_linear(state[f"{ours}.qkv.{leaf}"])  # (3C, C) or (3C,): rows [q | k | v]
            for name, part in zip(("to_q", "to_k", "to_v"), qkv.chunk(3)):
                out[f"{theirs}.{name}.{leaf}"] = part
            out[f"{theirs}.to_out.0.{leaf}"] = _as_linear(state[f"{ours}.proj_out.{leaf}"])
            moved |= {f"{ours}.qkv.{leaf}", f"{ours}.proj_out.{leaf}"}
    _check_all_moved(state, moved, "UNet")
    return out


def from_diffusers_state_dict(state: dict[str, Tensor], cfg: UNetConfig) -> dict[str, Tensor]:
    """UNet2DModel's state dict as our UNet's (for ``UNet(**unet_kwargs_from_diffusers(config))``)."""
    renames = [(theirs, ours) for ours, theirs in _renames(cfg)]
    out = _move(state, iter(renames))
    moved = {f"{a}.{leaf}" for a, _ in renames for leaf in ("weight", "bias")}
    for ours, theirs in _attentions(cfg):
        for leaf in ("weight", "bias"):
            parts = [state[f"{theirs}.{name}.{leaf}"] for name in ("to_q", "to_k", "to_v")]
            conv = (1, 1) if leaf == "weight" else ()  # a 1x1 conv's weight is (C_out, C_in, 1, 1)
            qkv = torch.cat(parts, dim=0)  # (3C, C) or (3C,)
            out[f"{ours}.qkv.{leaf}"] = qkv.reshape(*qkv.shape, *conv)
            proj = state[f"{theirs}.to_out.0.{leaf}"]
            out[f"{ours}.proj_out.{leaf}"] = proj.reshape(*proj.shape, *conv)
            moved |= {f"{theirs}.{n}.{leaf}" for n in ("to_q", "to_k", "to_v", "to_out.0")}
    _check_all_moved(state, moved, "UNet2DModel")
    return out
