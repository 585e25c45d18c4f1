"""The DDPM / ADM family UNet.

References:
    Ho, Jain, Abbeel 2020, "Denoising Diffusion Probabilistic Models" (DDPM), the CIFAR-10 network.
    Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis" (ADM): multi-head attention,
    adaptive group norm (``use_scale_shift_norm``), residual up/downsampling (``resblock_updown``),
    class labels.

With the default config (base 128, mult (1, 2, 2, 2), 2 res blocks, attention at 16x16, 32x32 input) this is
exactly Ho et al.'s 35.7M-parameter CIFAR-10 network. Layout, for L = len(channel_mult) levels:

    conv_in -> [L levels of (num_res_blocks x ResBlock[+Attn]), Downsample between levels]
            -> middle (ResBlock, Attn, ResBlock)
            -> [L levels of ((num_res_blocks + 1) x ResBlock[+Attn] on concat(h, skip)),
                Upsample between levels]
            -> GroupNorm, SiLU, conv_out

Every down-path activation (conv_in output, each res block output, each downsample output) is pushed on a
stack and consumed, last first, by one up-path res block. The network knows nothing of diffusion: it maps
(x, t, y) -> tensor of shape (B, out_channels, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.nets.embeddings import timestep_embedding
from diffusion_lab.nets.fused_norm import GroupNormSiLU, check_fused_norm


@dataclass
class UNetConfig:
    in_channels: int = 3
    out_channels: int | None = None  # None -> in_channels; 2 * in_channels for a learned variance (ADM)
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (
        16,
    )  # feature-map sizes (e.g. 16 means 16x16) that get attention
    image_size: int = 32
    dropout: float = 0.1
    num_heads: int = 1
    num_head_channels: int = -1  # if != -1, overrides num_heads: heads = channels // num_head_channels
    use_scale_shift_norm: bool = False  # ADM's AdaGN: norm(h) * (1 + scale) + shift instead of h + emb
    num_classes: int | None = None  # label value num_classes is the null (unconditional) class
    resblock_updown: bool = False  # ADM: resample with a ResBlock instead of a plain (de)conv
    groups: int = 32  # GroupNorm groups
    norm_eps: float = (
        1e-6  # GroupNorm epsilon: 1e-6 as in Ho et al. (diffusers' UNet2DModel defaults to 1e-5)
    )
    # GroupNorm(+AdaGN)+SiLU as Triton kernels: auto (on CUDA when triton imports), true, false. Same math
    # and parameters either way; see nets/fused_norm.py.
    fused_norm: str = "false"

    def __post_init__(self) -> None:
        # Hydra/OmegaConf hands us lists (or ListConfig); the dataclass wants hashable tuples of ints.
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.fused_norm = check_fused_norm(self.fused_norm)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        if self.out_channels is None:
            self.out_channels = self.in_channels
        n_down = len(self.channel_mult) - 1
        if self.image_size % (2**n_down) != 0:
            # nearest x2 upsampling must recover each skip's size exactly, so every downsampled size is even
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**{n_down} (one per downsample)"
            )
        for c in {self.base_channels * m for m in self.channel_mult}:
            if c % self.groups != 0:
                raise ValueError(f"channel count {c} is not divisible by groups={self.groups}")


def normalization(channels: int, groups: int, eps: float = 1e-6) -> nn.GroupNorm:
    # eps=1e-6 as in Ho et al.'s tf.contrib group_norm
    return nn.GroupNorm(groups, channels, eps=eps)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so that the residual branch it ends starts as the identity (DDPM, ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    module._zero_init = True  # tells UNet._init_weights to leave it alone
    return module


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv (Ho et al., with_conv=True)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double H and W with nearest-neighbour interpolation followed by a 3x3 conv (Ho et al.)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        return self.conv(x)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, add time embedding, GroupNorm-SiLU-dropout-conv, plus a skip connection.

    Each GroupNorm-SiLU pair (with AdaGN's scale and shift between them under ``use_scale_shift_norm``) is one
    ``GroupNormSiLU`` module, fused into Triton kernels on the GPU (``fused_norm``).

    With ``up``/``down`` the block also resamples (ADM's resblock_updown): the resampling is applied after the
    first norm+SiLU on the residual branch, and to the skip, so both branches agree in size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float,
        groups: int,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
        norm_eps: float = 1e-6,
        fused_norm: str = "false",
    ):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.up, self.down = up, down
        self.norm1 = GroupNormSiLU(groups, in_channels, norm_eps, fused_norm)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        # AdaGN needs a scale and a shift per channel; the additive variant needs one bias per channel
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.norm2 = GroupNormSiLU(groups, out_channels, norm_eps, fused_norm)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        # 1x1 conv ("NIN shortcut" in Ho et al.) only where the channel count changes
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)  # (B, C, H/2, W/2)
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.norm1(x)  # silu(norm(x))
        h = self._resample(h)
        x = self._resample(x)
        h = self.conv1(h)  # (B, C_out, H, W)
        e = self.emb_proj(F.silu(emb))[:, :, None, None]  # (B, C_out or 2*C_out, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)  # each (B, C_out, 1, 1)
            h = self.norm2(h, scale, shift)  # silu(norm(h) * (1 + scale) + shift)
        else:
            h = self.norm2(h + e)  # silu(norm(h + e))
        h = self.conv2(self.dropout(h))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual connection.

    One head reproduces Ho et al. (q, k, v and proj_out are 1x1 convs; here q, k, v are fused into one conv,
    which has the same parameter count). The output projection is zero-initialised, as in DDPM and ADM.
    """

    def __init__(self, channels: int, num_heads: int, groups: int, norm_eps: float = 1e-6):
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = normalization(channels, groups, norm_eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        nh = self.num_heads
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W), stored as x is
        # The same split either way; the reshapes follow the storage order so that neither the forward nor the
        # backward converts layouts (in channels_last, NCHW reshapes hand the qkv conv an NCHW gradient).
        nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        if nhwc:
            qkv = qkv.permute(0, 2, 3, 1).reshape(B, H * W, 3, nh, C // nh)  # (B, HW, 3, nh, hd): a view
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, HW, hd)
        else:
            qkv = qkv.reshape(B, 3, nh, C // nh, H * W)  # (B, 3, nh, hd, HW)
            q, k, v = qkv.permute(1, 0, 2, 4, 3).unbind(0)  # each (B, nh, HW, hd)
        # SDPA's default scale 1/sqrt(hd) is Ho et al.'s C**-0.5 for a single head
        h = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, hd)
        if nhwc:
            h = h.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W), stored NHWC
        else:
            h = h.transpose(2, 3).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.proj_out(h)


class UNet(nn.Module):
    """DDPM/ADM UNet: ``forward(x (B, C, H, W), t (B,), y (B,) | None) -> (B, out_channels, H, W)``.

    Construct with flat keyword arguments (those of ``UNetConfig``), as Hydra's ``instantiate`` does.
    """

    # The blocks repeated through the network, for regional compilation (``compile_scope=blocks``).
    repeated_blocks = (ResBlock, AttentionBlock)

    def __init__(self, **kwargs):
        super().__init__()
        self.config = cfg = UNetConfig(**kwargs)
        ch = cfg.base_channels
        self.emb_dim = emb_dim = 4 * ch  # 512 for Ho et al.'s CIFAR-10 network
        # timestep: sinusoidal(ch) -> Linear -> SiLU -> Linear, to emb_dim
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # classes: one extra row, index num_classes, is the null label used for classifier-free guidance
        self.label_embed = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes is not None else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        # Built in this order (down, mid, up, out): each layer draws its initial weights from the seed in turn.
        self.down, skip_channels, c, size = self._down_path()
        self.mid = nn.ModuleList([self._res(c, c), self._attn(c), self._res(c, c)])
        self.up, c = self._up_path(skip_channels, c, size)
        self.norm_out = GroupNormSiLU(cfg.groups, c, cfg.norm_eps, cfg.fused_norm)
        self.conv_out = zero_module(nn.Conv2d(c, cfg.out_channels, 3, padding=1))
        self._init_weights()

    def _res(self, c_in: int, c_out: int, **kw) -> ResBlock:
        cfg = self.config
        return ResBlock(
            c_in,
            c_out,
            self.emb_dim,
            cfg.dropout,
            cfg.groups,
            cfg.use_scale_shift_norm,
            norm_eps=cfg.norm_eps,
            fused_norm=cfg.fused_norm,
            **kw,
        )

    def _attn(self, channels: int) -> AttentionBlock:
        cfg = self.config
        heads = channels // cfg.num_head_channels if cfg.num_head_channels != -1 else cfg.num_heads
        return AttentionBlock(channels, heads, cfg.groups, cfg.norm_eps)

    def _down_path(self) -> tuple[nn.ModuleList, list[int], int, int]:
        """A flat list of blocks, each a ModuleList [ResBlock(, Attn)] or [Downsample] (or [ResBlock(down=True)]);
        every block's output is one skip activation for the up path. Also: the skips' channels (conv_in's
        first), and the channels and feature-map size at the bottom."""
        cfg = self.config
        ch = cfg.base_channels
        skip_channels = [ch]  # conv_in output
        down = nn.ModuleList()
        c, size = ch, cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            c_out = ch * mult
            for _ in range(cfg.num_res_blocks):
                block = nn.ModuleList([self._res(c, c_out)])
                c = c_out
                if size in cfg.attention_resolutions:
                    block.append(self._attn(c))
                down.append(block)
                skip_channels.append(c)
            if level != len(cfg.channel_mult) - 1:
                down.append(
                    nn.ModuleList([self._res(c, c, down=True) if cfg.resblock_updown else Downsample(c)])
                )
                skip_channels.append(c)
                size //= 2
        return down, skip_channels, c, size

    def _up_path(self, skip_channels: list[int], c: int, size: int) -> tuple[nn.ModuleList, int]:
        """num_res_blocks + 1 blocks per level, each first concatenating one skip (taken from the end of
        ``skip_channels``, all of them used); the last block of each level but the top one ends with the
        upsampler. Also: the channels at the top."""
        cfg = self.config
        up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            c_out = cfg.base_channels * mult
            for i in range(cfg.num_res_blocks + 1):
                block = nn.ModuleList([self._res(c + skip_channels.pop(), c_out)])
                c = c_out
                if size in cfg.attention_resolutions:
                    block.append(self._attn(c))
                if level != 0 and i == cfg.num_res_blocks:
                    block.append(self._res(c, c, up=True) if cfg.resblock_updown else Upsample(c))
                    size *= 2
                up.append(block)
        assert not skip_channels
        return up, c

    def _init_weights(self) -> None:
        # Ho et al. initialise every conv/dense with variance_scaling(1, fan_avg, uniform) == Xavier uniform
        # and zero biases; layers ending a residual branch (and conv_out) were already zeroed and stay zero.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not getattr(m, "_zero_init", False):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def _apply_block(self, block: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time_embed(timestep_embedding(t, self.config.base_channels))  # (B, 4 * ch)
        if self.label_embed is not None:
            if y is None:  # no labels given: condition on the null class
                y = torch.full((x.shape[0],), self.config.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_embed(y)  # (B, 4 * ch)
        elif y is not None:
            raise ValueError("labels y given to a UNet built without num_classes")

        h = self.conv_in(x)  # (B, ch, H, W)
        hs = [h]
        for block in self.down:
            h = self._apply_block(block, h, emb)
            hs.append(h)

        h = self._apply_block(self.mid, h, emb)  # (B, C_mid, H_min, W_min)

        for block in self.up:
            h = torch.cat([h, hs.pop()], dim=1)  # (B, C + C_skip, H, W)
            h = self._apply_block(block, h, emb)

        return self.conv_out(self.norm_out(h))  # (B, out_channels, H, W); norm_out ends with SiLU
