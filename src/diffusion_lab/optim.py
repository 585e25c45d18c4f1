"""Optimization helpers: the learning-rate schedule (linear warm-up, then constant or cosine decay; a LambdaLR, so
it checkpoints), and the parameters an optimizer updates with their gradient norm."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["warmup_schedule", "optimizer_params", "total_norm"]


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int = 0,
    decay: str = "constant",
    total_steps: int | None = None,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """lr factor: step/warmup during warm-up; then 1 (``constant``) or a half cosine to ``min_lr_ratio``."""
    if warmup_steps < 0:
        raise ValueError(f"lr_scheduler.warmup_steps={warmup_steps!r} is invalid: it must be an integer >= 0")
    if decay not in ("constant", "cosine"):
        raise ValueError(f"lr_scheduler.decay={decay!r} is unknown; choose 'constant' or 'cosine'")
    if decay == "cosine" and (total_steps is None or total_steps <= warmup_steps):
        raise ValueError(
            f"lr_scheduler.decay=cosine needs total_steps > warmup_steps; got total_steps={total_steps}, "
            f"warmup_steps={warmup_steps} (set trainer.max_steps)"
        )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The parameters the optimizer updates, from its lists: walking the module tree (``net.parameters()``)
    on every step costs host time that a CUDA-graphed step cannot hide."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def total_norm(tensors: list[Tensor]) -> Tensor:
    """The 2-norm of all ``tensors`` together (multi-tensor kernels where torch has them)."""
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm(tensors, 2.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in tensors]))
