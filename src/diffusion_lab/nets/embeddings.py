"""Embeddings shared by every network: the sinusoidal timestep embedding.

Networks receive the raw timestep value (an integer step index such as 0..999, or a float). The embedding is
the Transformer position encoding of Vaswani et al. applied to that value, exactly as in ADM and DiT:

    freqs_i = max_period ** (-i / half),  i = 0 .. half - 1
    emb     = [cos(t * freqs), sin(t * freqs)]

The lowest frequency is 1 / max_period, so the embedding resolves values on roughly a 1..max_period scale: a
caller using continuous time t in [0, 1] should scale it (e.g. by 1000) before handing it to a network.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of timesteps.

    Args:
        t: (B,) timesteps, integer or floating point; fractional values are fine.
        dim: embedding width. An odd ``dim`` gets a zero column appended.
        max_period: controls the lowest frequency of the embedding.

    Returns:
        (B, dim) float32 tensor (computed in float32 even under autocast: bf16 cannot represent t * freq for
        t ~ 1000 precisely enough to keep neighbouring steps distinct).
    """
    half = dim // 2
    # frequencies decay geometrically from 1 to (almost) 1 / max_period
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # (B, dim)
    return emb
