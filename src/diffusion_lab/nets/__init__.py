"""Denoising networks. They know nothing of diffusion: each maps (x, t, y) -> tensor.

UNet        DDPM/ADM UNet (default config == Ho et al.'s 35.7M CIFAR-10 network)
DiT         Diffusion Transformer (Peebles & Xie), presets dit_s / dit_b
MLPDenoiser residual MLP for low-dimensional toy data
AutoencoderKL  KL-regularised autoencoder (LDM's first stage): encode(x) -> (mean, logvar), decode(z)
"""

from __future__ import annotations

from torch import nn

from diffusion_lab.nets.autoencoder import AutoencoderConfig, AutoencoderKL
from diffusion_lab.nets.dit import DiT, DiTConfig, dit_b, dit_s
from diffusion_lab.nets.embeddings import timestep_embedding
from diffusion_lab.nets.mlp import MLPDenoiser
from diffusion_lab.nets.unet import UNet, UNetConfig


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers, such as DiT's fixed position embedding, are not parameters)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "AutoencoderConfig",
    "AutoencoderKL",
    "DiT",
    "DiTConfig",
    "MLPDenoiser",
    "UNet",
    "UNetConfig",
    "count_parameters",
    "dit_b",
    "dit_s",
    "timestep_embedding",
]
