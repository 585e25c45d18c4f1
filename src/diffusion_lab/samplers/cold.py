"""The two samplers of cold diffusion (Bansal et al. 2022), from the fitted prior of x_T back to an image.

At each kept level s (from T-1 down) the network restores x̂_0 = R(x_s, s); the step to the next kept level s'
(-1, the clean image, after the last) is

    naive    (Algorithm 1)  x_{s'} = D(x̂_0, s')
    improved (Algorithm 2)  x_{s'} = x_s - D(x̂_0, s) + D(x̂_0, s')

For a linear D the improved step moves x_s by D's own change between the levels, so an error of x̂_0 enters
only through that difference, not whole as in the naive step. With Gaussian noise as D, both degrade x̂_0 with the
noise implied by (x̂_0, x_s), which makes the improved sampler DDIM with η = 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion.cold import ColdDiffusion
from ..diffusion.process import ModelFn
from .base import GridSampler, OnStep

__all__ = ["ColdSampler", "NaiveColdSampler", "ImprovedColdSampler", "cold_levels"]


def cold_levels(num_timesteps: int, steps: int | str | None) -> list[int]:
    """The levels a sampler visits, from T-1 down: all of them (``steps: None``), or N evenly spaced with T-1
    and (for N >= 2) 0 among them."""
    T = num_timesteps
    if steps is None:
        return list(range(T - 1, -1, -1))
    try:
        n = int(steps)
    except (TypeError, ValueError):
        n = 0
    if not 1 <= n <= T or str(steps).strip() != str(n):
        raise ValueError(
            f"sampler.steps={steps!r} is invalid: a cold sampler takes a number of levels between 1 and T={T} "
            "(or null for all)"
        )
    return torch.linspace(T - 1, 0, n, dtype=torch.float64).round().long().tolist()


class ColdSampler(GridSampler):
    """Walks a ``ColdDiffusion`` back from its prior; subclasses give the step between levels."""

    processes = ("cold",)
    stochastic = False

    def update(self, process: ColdDiffusion, x: Tensor, x0_hat: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        """x at level t_next from x at level t and the restored x̂_0."""
        raise NotImplementedError

    def num_steps(self, process: ColdDiffusion) -> int:
        return len(cold_levels(process.num_timesteps, self.steps))

    def start(
        self, process: ColdDiffusion, noise: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """x_T from the process's prior (its draws from ``generator``)."""
        return process.prior_sample(noise, generator)

    def walk(self, process: ColdDiffusion, model: ModelFn, x: Tensor, generator, on_step: OnStep) -> Tensor:
        """From x at level T-1 down to the clean image: one network evaluation per kept level."""
        levels = cold_levels(process.num_timesteps, self.steps)
        for k, level in enumerate(levels):
            t = torch.full((x.shape[0],), level, device=x.device, dtype=torch.long)
            t_next = torch.full_like(t, levels[k + 1] if k + 1 < len(levels) else -1)
            x0_hat = model(x, t).to(x.dtype)
            if self.clip_denoised:
                x0_hat = x0_hat.clamp(-1.0, 1.0)
            x = self.update(process, x, x0_hat, t, t_next)
            on_step(k, level, x, x0_hat)
        return x


class NaiveColdSampler(ColdSampler):
    """Algorithm 1: degrade the restored x̂_0 to the next level, x_{s'} = D(x̂_0, s')."""

    name = "cold_naive"

    def update(self, process, x, x0_hat, t, t_next):
        return process.corrupt(x0_hat, t_next, process.implied_noise(x0_hat, x, t))


class ImprovedColdSampler(ColdSampler):
    """Algorithm 2: x_{s'} = x_s - D(x̂_0, s) + D(x̂_0, s')."""

    name = "cold_improved"

    def update(self, process, x, x0_hat, t, t_next):
        noise = process.implied_noise(x0_hat, x, t)
        return x - process.corrupt(x0_hat, t, noise) + process.corrupt(x0_hat, t_next, noise)
