"""Samplers: ancestral DDPM (full or respaced) and DDIM(η); each takes the model as a callable."""

from __future__ import annotations

from .base import Sampler, Trajectory
from .ddim import DDIMSampler
from .ddpm import DDPMSampler

SAMPLERS: dict[str, type[Sampler]] = {"ddpm": DDPMSampler, "ddim": DDIMSampler}


def build_sampler(name: str, **kwargs) -> Sampler:
    """``build_sampler("ddim", steps=50, eta=0.0)``; ``build_sampler("ddpm", steps="ddim50")``."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is unknown; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](**kwargs)


__all__ = ["Sampler", "Trajectory", "DDPMSampler", "DDIMSampler", "SAMPLERS", "build_sampler"]
