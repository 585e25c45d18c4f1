"""Learning-rate schedules: linear warm-up, then constant or cosine decay (a LambdaLR, so it checkpoints)."""

from __future__ import annotations

import math

import torch

__all__ = ["warmup_schedule"]


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int = 0,
    decay: str = "constant",
    total_steps: int | None = None,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """lr factor: step/warmup during warm-up; then 1 (``constant``) or a half cosine to ``min_lr_ratio``."""
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
