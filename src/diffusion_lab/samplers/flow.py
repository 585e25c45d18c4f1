"""Euler and Heun on a flow's ODE dx/dt = v̂(x, t), from t = 1 (x = ε ~ N(0, I)) to t = 0 (data).

The time grid, N steps, uniform or shifted towards the noise end as SD3 does for larger images (Esser et al. 2024,
§5.3.2; shift = 1 is uniform):

    t_i = 1 − i/N  (i = 0 .. N),      t_i ← shift·t_i / (1 + (shift − 1)·t_i)

Each step, with h = t_{i+1} − t_i < 0:

    x̃ = x_i + h·v̂(x_i, t_i)                                                        (Euler)
    x_{i+1} = x_i + h·(v̂(x_i, t_i) + v̂(x̃, t_{i+1})) / 2   unless t_{i+1} = 0       (Heun's correction)

so N steps cost 2N − 1 evaluations with Heun (the last step, into the data, is Euler as in Karras et al.'s
Algorithm 1), N with Euler.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .base import GridSampler, OnStep

__all__ = ["flow_times", "flow_sample", "FlowEulerSampler", "FlowHeunSampler"]

Velocity = Callable[[Tensor, float], Tensor]  # v̂(x, t) for one t shared by the batch


def flow_times(steps: int, shift: float = 1.0) -> Tensor:
    """The N + 1 times from 1 to 0, shifted, in float64."""
    t = 1.0 - torch.arange(steps + 1, dtype=torch.float64) / steps
    return shift * t / (1.0 + (shift - 1.0) * t)


def flow_sample(
    velocity: Velocity,
    x: Tensor,
    times: Tensor,
    second_order: bool = True,
    on_step: OnStep | None = None,
) -> Tensor:
    """Euler (Heun with ``second_order``) from ``x`` at times[0] along ``times`` (decreasing, the last 0).
    ``on_step(i, t_i, x_{i+1}, v̂(x_i, t_i))`` sees every step."""
    for i in range(len(times) - 1):
        t, t_next = float(times[i]), float(times[i + 1])
        v = velocity(x, t)
        x_next = x + (t_next - t) * v
        if second_order and t_next > 0:
            x_next = x + (t_next - t) * (0.5 * v + 0.5 * velocity(x_next, t_next))
        x_prev, x = x, x_next
        if on_step is not None:
            on_step(i, t, x, x_prev - t * v)  # x̂_0 = x_t − t·v̂ at the step's input
    return x


class FlowEulerSampler(GridSampler):
    """Euler on the flow ODE: one network evaluation per step."""

    name = "flow_euler"
    processes = ("flow",)
    stochastic = False
    second_order = False

    def __init__(self, steps: int = 50, shift: float = 1.0):
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"sampler.steps={steps!r} is invalid: give a number of time steps >= 1")
        if not shift > 0:
            raise ValueError(f"sampler.shift={shift!r} must be > 0 (1: a uniform grid)")
        self.steps, self.shift = steps, shift

    def walk(self, process, model, x: Tensor, generator: torch.Generator | None, on_step: OnStep) -> Tensor:
        """From x at t = 1 (``sample``'s noise) to t = 0."""

        def velocity(x: Tensor, t: float) -> Tensor:
            return process.velocity(model, x, torch.full((x.shape[0],), t, device=x.device))

        return flow_sample(velocity, x, flow_times(self.steps, self.shift), self.second_order, on_step)


class FlowHeunSampler(FlowEulerSampler):
    """Heun on the flow ODE: 2·steps − 1 network evaluations (the last step is Euler)."""

    name = "flow_heun"
    second_order = True

    def __init__(self, steps: int = 25, shift: float = 1.0):
        super().__init__(steps, shift)
