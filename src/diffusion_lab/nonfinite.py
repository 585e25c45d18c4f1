"""What a training step does when its loss or gradients are not finite: skip the optimizer step (and count it),
stop with an error, or nothing (``nonfinite=skip|stop|off``). Nothing non-finite reaches the weights, the EMA or
a checkpoint."""

from __future__ import annotations

import sys

import lightning as L
import torch
from torch import Tensor

from .errors import NonFiniteError

__all__ = ["NONFINITE_POLICIES", "NonFiniteGuard"]

NONFINITE_POLICIES = ("skip", "stop", "off")


class NonFiniteGuard:
    """The ``nonfinite`` policy of one module and its count of skipped steps (stored in checkpoints)."""

    def __init__(self, policy: str = "skip"):
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite={policy!r} is invalid; choose one of {list(NONFINITE_POLICIES)}")
        self.policy = policy
        self.skipped_steps = 0
        self.step_skipped = False  # this step's update was dropped (the EMA callback then does not average)
        self._skipped_on_device: Tensor | float = 0.0  # steps skipped by a fused optimizer, not yet read

    def check(
        self,
        module: L.LightningModule,
        loss: Tensor | None,
        terms: dict[str, Tensor],
        grad_norm: Tensor | None,
    ) -> None:
        """Drop this step's update if the loss or the gradients are not finite (``skip``: the gradients are set
        to None, so the optimizer leaves the weights and its moments untouched and the EMA does not average), or
        raise (``stop``).

        Cost: finiteness is computed on the device (the gradient norm: one read of the gradients, which
        clipping reads again) and read by the host once per step — one device sync per step, placed after
        backward, so only the launch of the optimizer kernels waits for it (it matters only for steps of a few
        milliseconds, e.g. CUDA-graphed small models: ``nonfinite=off`` removes it). Under 16-mixed the
        GradScaler already skips steps with inf/nan gradients (its normal scale search), so only the loss is
        checked there. With several processes the decision is all-reduced, so every rank skips (or stops at)
        the same steps.
        """
        trainer = module.trainer
        bad = _nonfinite_flag(module, loss, grad_norm)
        optimizer = trainer.optimizers[0]
        if self.policy == "skip" and _skips_on_device(optimizer, trainer):
            # Fused Adam/AdamW read ``found_inf`` on the device and leave weights, moments and step counts
            # untouched when it is non-zero (the mechanism GradScaler uses): no host sync, so a CUDA-graphed
            # step keeps the CPU running ahead. The count is read only when it is logged.
            optimizer.found_inf = (bad > 0).float()
            self._skipped_on_device = self._skipped_on_device + optimizer.found_inf
            return
        if not bad.item():  # the one host sync per step
            return
        what = _describe_nonfinite(module, loss, terms, grad_norm)
        step = trainer.global_step
        if self.policy == "stop":
            raise NonFiniteError(
                f"{what} at step {step} (nonfinite=stop); nonfinite=skip skips such steps, or lower optimizer.lr"
            )
        for p in module.parameters():
            p.grad = None
        self.skipped_steps += 1
        self.step_skipped = True
        n = self.skipped_steps
        if trainer.is_global_zero and (n <= 10 or n % 100 == 0):
            print(
                f"warning: {what} at step {step}: optimizer step skipped (nonfinite=skip; {n} skipped so far)",
                file=sys.stderr,
                flush=True,
            )

    def fold(self) -> int:
        """Add the device-side count of skipped steps (fused optimizers) to ``skipped_steps`` (one host read)."""
        if isinstance(self._skipped_on_device, Tensor):
            self.skipped_steps += int(self._skipped_on_device.item())
            self._skipped_on_device = 0.0
        return self.skipped_steps


def _nonfinite_flag(module: L.LightningModule, loss: Tensor | None, grad_norm: Tensor | None) -> Tensor:
    """1.0 on the device when this step's loss (or, outside float16 scaling, gradient norm) is not finite on any
    rank, else 0.0."""
    trainer = module.trainer
    ok = torch.isfinite(loss) if loss is not None else torch.ones((), dtype=torch.bool, device=module.device)
    if grad_norm is not None and str(trainer.precision) not in ("16-mixed", "16"):
        ok = ok & torch.isfinite(grad_norm)
    bad = (~ok).float()
    if trainer.world_size > 1:
        bad = trainer.strategy.reduce(bad, reduce_op="sum")
    return bad


def _skips_on_device(optimizer: torch.optim.Optimizer, trainer: L.Trainer) -> bool:
    """Whether the optimizer can skip a step from a device-side flag: fused Adam/AdamW (CUDA or CPU), and no float16
    GradScaler (which owns ``found_inf`` itself)."""
    fused = isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and optimizer.param_groups[0].get(
        "fused"
    )
    return bool(fused) and str(trainer.precision) not in ("16-mixed", "16")


def _describe_nonfinite(
    module: L.LightningModule, loss: Tensor | None, terms: dict[str, Tensor], grad_norm: Tensor | None
) -> str:
    """Which loss term (or the gradients) went non-finite: host reads, on the failure path only."""
    bad_terms = [
        f"{name}={_first_nonfinite(value)}"
        for name, value in terms.items()
        if not bool(torch.isfinite(value).all())
    ]
    if loss is not None and not bool(torch.isfinite(loss)):
        return "non-finite loss (" + (", ".join(bad_terms) if bad_terms else f"loss={loss.item()}") + ")"
    if grad_norm is not None and not bool(torch.isfinite(grad_norm)):
        names = [
            n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        first = f", first in {names[0]}, {len(names)} tensor(s)" if names else ""
        return f"non-finite gradients (norm={grad_norm.item()}{first})"
    return "non-finite loss or gradients on another rank"


def _first_nonfinite(value: Tensor) -> str:
    bad = value[~torch.isfinite(value)]
    return str(bad.flatten()[0].item()) if bad.numel() else "?"
