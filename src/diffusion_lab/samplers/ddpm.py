"""Ancestral sampling (Ho et al. 2020, Alg. 2) on all T steps, or respaced (IDDPM) on any subset."""

from __future__ import annotations

from .base import Sampler

__all__ = ["DDPMSampler"]


class DDPMSampler(Sampler):
    """x_{t-1} = μ_θ(x_t, t) + σ_t z, z ~ N(0, I); no noise at the last step."""

    name = "ddpm"

    def step(self, diffusion, out, x, t, i, noise):
        if noise is None:
            return out.mean
        return out.mean + (0.5 * out.log_variance).exp() * noise
