"""A KL-regularised convolutional autoencoder: LDM's first stage (Rombach et al. 2022, the "KL-f" family).

    encoder:  conv_in -> [L levels of num_res_blocks x ResnetBlock, Downsample between levels]
              -> middle (ResnetBlock, [Attention,] ResnetBlock) -> GroupNorm, SiLU, conv_out
              -> 1x1 "quant" conv -> (mean, log variance), each (B, latent_channels, H/f, W/f)
    decoder:  1x1 "post-quant" conv -> conv_in -> middle -> [L levels of (num_res_blocks + 1) x ResnetBlock,
              Upsample between levels] -> GroupNorm, SiLU, conv_out -> (B, in_channels, H, W)

with f = 2 ** (len(channel_mult) - 1) (28 -> 14 -> 7 for channel_mult (1, 2, 2)). The posterior is a diagonal
Gaussian; ``encode`` returns its mean and log variance, ``decode`` maps a latent back to an image. The network
knows nothing of diffusion, nor of its loss (``latent/autoencoder_loss.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.nets.unet import AttentionBlock, Downsample, Upsample, normalization

__all__ = ["AutoencoderConfig", "AutoencoderKL"]

# LDM's DiagonalGaussianDistribution clamps the log variance to this range, so exp() never over/underflows.
LOGVAR_RANGE = (-30.0, 20.0)


@dataclass
class AutoencoderConfig:
    in_channels: int = 1
    latent_channels: int = 4
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)  # f = 2 ** (len - 1): one downsample between levels
    num_res_blocks: int = 1
    attention: bool = True  # self-attention in the middle of the encoder and decoder (LDM's mid.attn_1)
    groups: int = 32
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        if not self.channel_mult:
            raise ValueError("autoencoder channel_mult is empty; give one multiplier per resolution level")
        for c in {self.base_channels * m for m in self.channel_mult}:
            if c % self.groups != 0:
                raise ValueError(f"autoencoder channel count {c} is not divisible by groups={self.groups}")
        if self.latent_channels < 1:
            raise ValueError(f"autoencoder latent_channels={self.latent_channels} must be >= 1")

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus a (1x1 where the width changes) skip: the UNet's block without a time
    embedding."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = normalization(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalization(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


def _middle(channels: int, cfg: AutoencoderConfig) -> nn.Sequential:
    attn = [AttentionBlock(channels, 1, cfg.groups)] if cfg.attention else []
    res = [ResnetBlock(channels, channels, cfg.groups, cfg.dropout) for _ in range(2)]
    return nn.Sequential(res[0], *attn, res[1])


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> (B, 2 * latent_channels, H/f, W/f): the mean and log variance, stacked."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch = cfg.base_channels
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch, 3, padding=1)]
        c = ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResnetBlock(c, ch * mult, cfg.groups, cfg.dropout))
                c = ch * mult
            if level != len(cfg.channel_mult) - 1:
                layers.append(Downsample(c))  # (B, C, H/2, W/2)
        layers += [_middle(c, cfg), normalization(c, cfg.groups), nn.SiLU()]
        layers.append(nn.Conv2d(c, 2 * cfg.latent_channels, 3, padding=1))
        layers.append(nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1))  # LDM's quant_conv
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """(B, latent_channels, H/f, W/f) -> (B, in_channels, H, W)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch = cfg.base_channels
        c = ch * cfg.channel_mult[-1]
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1),  # LDM's post_quant_conv
            nn.Conv2d(cfg.latent_channels, c, 3, padding=1),
            _middle(c, cfg),
        ]
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResnetBlock(c, ch * mult, cfg.groups, cfg.dropout))
                c = ch * mult
            if level != 0:
                layers.append(Upsample(c))  # (B, C, 2H, 2W)
        layers += [normalization(c, cfg.groups), nn.SiLU(), nn.Conv2d(c, cfg.in_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(z)


class AutoencoderKL(nn.Module):
    """``encode(x) -> (mean, logvar)``, ``decode(z) -> x̂``, ``forward(x) -> (x̂, mean, logvar)`` with z drawn
    from the posterior (its mean with ``sample=False``).

    Construct with flat keyword arguments (those of ``AutoencoderConfig``), as Hydra's ``instantiate`` does.
    """

    def __init__(self, **kwargs):
        super().__init__()
        self.config = cfg = AutoencoderConfig(**kwargs)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def downsampling_factor(self) -> int:
        return self.config.downsampling_factor

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(latent_channels, H/f, W/f) of an image of ``image_shape`` (C, H, W); H and W must divide by f."""
        c, h, w = image_shape
        f = self.downsampling_factor
        if c != self.config.in_channels or h % f or w % f:
            raise ValueError(
                f"images of shape {tuple(image_shape)} do not fit this autoencoder: it takes "
                f"{self.config.in_channels} channel(s) and sizes divisible by its downsampling factor f={f}"
            )
        return (self.config.latent_channels, h // f, w // f)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        moments = self.encoder(x)  # (B, 2 * latent_channels, H/f, W/f)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(
        self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        mean, logvar = self.encode(x)
        z = mean
        if sample:
            noise = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype, generator=generator)
            z = mean + (0.5 * logvar).exp() * noise  # the reparameterisation trick
        return self.decode(z), mean, logvar
