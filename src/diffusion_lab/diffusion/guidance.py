"""Class conditioning: label dropout for training and classifier-free guidance (Ho & Salimans 2022) for sampling.

Guidance combines the conditional and unconditional outputs as (1 + w)·out(x_t, c) − w·out(x_t, ∅). Written
for ε this is ε̃ = (1 + w) ε_c − w ε_∅. Because x_0 and v are affine in ε at a fixed x_t and the two weights
sum to one, the same combination applied to an x_0- or v-network's output is exactly the x_0 or v implied
by ε̃ — so guiding in the model's output space is correct for every parameterization. With a learned
variance only the mean channels are guided; the variance channels are the conditional ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["drop_labels", "ClassifierFreeGuidance"]


def drop_labels(
    y: Tensor, p_uncond: float, null_class: int, generator: torch.Generator | None = None
) -> Tensor:
    """Replace each label by the null class with probability ``p_uncond``."""
    drop = torch.rand(y.shape, device=y.device, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(y, null_class), y)


class ClassifierFreeGuidance:
    """A ``model(x_t, t)`` callable that guides ``net(x, t, y)`` towards labels ``y`` with scale ``w``."""

    def __init__(
        self,
        net: Callable[..., Tensor],
        y: Tensor,
        scale: float,
        null_class: int,
        mean_channels: int | None = None,
    ):
        self.net = net
        self.y = y
        self.scale = float(scale)
        self.null_class = null_class
        self.mean_channels = mean_channels  # None: all output channels are guided

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.scale == 0.0:
            return self.net(x, t, self.y)
        y_null = torch.full_like(self.y, self.null_class)
        # One batch of 2B: the conditional and unconditional passes share a single network call.
        out = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([self.y, y_null]))
        cond, uncond = out.chunk(2)  # (B, k·C, ...) each
        k = self.mean_channels or cond.shape[1]
        guided = (1.0 + self.scale) * cond[:, :k] - self.scale * uncond[:, :k]
        return torch.cat([guided, cond[:, k:]], dim=1)
