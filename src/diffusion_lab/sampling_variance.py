"""Evaluate a checkpoint with another fixed reverse variance than it was trained with.

A network trained with a fixed variance predicts only the mean, so the variance of its reverse steps is a
choice made at sampling time: DDPM used σ_t² = β_t on CIFAR-10 and β̃_t elsewhere, and DDIM's Table 1 scores
both (its σ̂ row is ancestral sampling with β_t on a model whose η = 1 row is β̃_t). evaluate's
``sampling_variance`` makes that choice; a learned variance is the network's output and is refused.
"""

from __future__ import annotations

import dataclasses

from .build import Parts
from .diffusion.process import Diffusion
from .diffusion.variances import build_variance
from .errors import UserError
from .samplers import Sampler

__all__ = ["FIXED_VARIANCES", "with_sampling_variance"]

FIXED_VARIANCES = ("fixed_small", "fixed_large")


def with_sampling_variance(parts: Parts, name: str | None, sampler: Sampler | None) -> Parts:
    """``parts`` with its diffusion's fixed reverse variance replaced by ``name`` (None: ``parts`` as it is).
    ``sampler``: the evaluation's sampler, refused when it does not read the variance (None: bits/dim only)."""
    if name is None:
        return parts
    if name not in FIXED_VARIANCES:
        raise UserError(
            f"sampling_variance={name} is unknown; choose one of {', '.join(FIXED_VARIANCES)} "
            "(or null: the checkpoint's own)"
        )
    diffusion = parts.diffusion
    if not isinstance(diffusion, Diffusion):
        raise UserError(
            f"sampling_variance={name} applies to Gaussian diffusion (process=ddpm), and this checkpoint's "
            f"process is {diffusion.name}; drop sampling_variance"
        )
    if diffusion.variance.learned:
        raise UserError(
            f"sampling_variance={name} replaces a fixed variance, and this checkpoint's network outputs its own "
            f"(variance={diffusion.variance.name}); drop sampling_variance"
        )
    if sampler is not None and sampler.name != "ddpm":
        raise UserError(
            f"sampling_variance={name} is read by ancestral sampling alone, and sampler={sampler.name} takes "
            "no variance from the process; use sampler=ddpm or drop sampling_variance"
        )
    variance = build_variance(name)
    replaced = Diffusion(diffusion.schedule, diffusion.prediction, variance, diffusion.timestep_map)
    return dataclasses.replace(parts, diffusion=replaced)
