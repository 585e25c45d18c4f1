"""Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2023; Esser et al. 2024 §2-3.1).

The straight path from data to noise and its velocity, for t ∈ [0, 1] (t = 0 data, t = 1 noise):

    x_t = (1 − t)·x_0 + t·ε,        v = dx_t/dt = ε − x_0

The network regresses v (conditional flow matching, loss ``flow``); sampling integrates dx/dt = v̂(x, t) from
t = 1 (pure noise) to t = 0 (samplers/flow.py). Since x_t is affine in (x_0, ε), a velocity reads as either:

    x̂_0 = x_t − t·v̂,        ε̂ = x_t + (1 − t)·v̂

Both are affine in v̂ with coefficients summing to one at fixed x_t, so classifier-free guidance on the network's
v̂ is exactly guidance on ε̂ or x̂_0 (diffusion/guidance.py).

The network sees ``time_scale``·t (1000 by default, as SD3): the sinusoidal embedding of nets/embeddings.py has
frequencies from 1 down to 10⁻⁴ per unit of its input, laid out for timestep indices 0..999; fed t ∈ [0, 1]
directly, all but its highest few frequencies would barely move and the network would hardly see the time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .process_base import Process

__all__ = ["FlowProcess"]


def _per_sample(v: Tensor, ndim: int) -> Tensor:
    return v.reshape(-1, *([1] * (ndim - 1)))  # (B,) -> (B, 1, ...)


class FlowProcess(Process):
    """x_t = (1 − t)·x_0 + t·ε with the network predicting v = ε − x_0; ``t`` a (B,) float tensor in [0, 1]."""

    name = "flow"

    def __init__(self, time_scale: float = 1000.0):
        if not time_scale > 0:
            raise ValueError(f"process.time_scale={time_scale!r} must be > 0")
        self.time_scale = float(time_scale)

    def corrupt(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        t = _per_sample(t, x0.ndim)
        return (1.0 - t) * x0 + t * noise

    @staticmethod
    def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
        return noise - x0

    def net_input(self, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return xt, self.time_scale * t

    def velocity(self, model: Callable[[Tensor, Tensor], Tensor], xt: Tensor, t: Tensor) -> Tensor:
        """v̂(x, t) with ``model(x, time_scale·t)`` the raw network (or a guided one): one evaluation."""
        return model(*self.net_input(xt, t))

    @staticmethod
    def to_x0(v: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        return xt - _per_sample(t, xt.ndim) * v

    @staticmethod
    def to_eps(v: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        return xt + (1.0 - _per_sample(t, xt.ndim)) * v

    def draw_validation_t(self, n, device, generator=None):
        """Uniform on [0, 1], whatever the training density: validation losses of runs stay comparable."""
        return torch.rand(n, device=device, generator=generator)

    def bucket(self, t: Tensor, num_buckets: int) -> Tensor:
        return (t * num_buckets).long().clamp(0, num_buckets - 1)

    def __repr__(self) -> str:
        return f"FlowProcess(time_scale={self.time_scale})"
