"""What every training task's LightningModule shares: one network ``self.net`` trained by an injected optimizer.

``NetTraining`` holds the optimization policies (the fused optimizer on a GPU, the learning-rate schedule per
step, gradient clipping that works with fused optimizers, the non-finite guard and its count of skipped steps,
the logging cadence, the last step's loss for progress bars and summaries), so a task module — the diffusion
``DiffusionModule``, the ``AutoencoderModule`` of latent diffusion — holds only what its task computes. A subclass
sets ``net``, ``optimizer_factory``, ``lr_scheduler_factory`` (or None), ``nonfinite_guard`` and, in each
training step, ``_step_loss`` / ``_step_terms`` (the detached loss and its per-sample terms).
"""

from __future__ import annotations

import inspect
from functools import partial

import lightning as L
import torch
from torch import Tensor, nn

from .nonfinite import NonFiniteGuard
from .optim import optimizer_params, total_norm

__all__ = ["NetTraining"]


class NetTraining(L.LightningModule):
    net: nn.Module
    nonfinite_guard: NonFiniteGuard
    _step_loss: Tensor | None = None
    _step_terms: dict[str, Tensor]

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for a non-finite loss or gradients so far (stored in checkpoints)."""
        return self.nonfinite_guard.fold()

    @property
    def step_skipped(self) -> bool:
        """Whether this step's update was dropped (the EMA callback then does not average)."""
        return self.nonfinite_guard.step_skipped

    def last_loss(self) -> float | None:
        """The last training step's loss (mean over its batch) as a number -- a host read, so for progress bars
        and summaries, not for every step."""
        loss = self._step_terms.get("loss")
        return float(loss.mean()) if loss is not None else None

    def _should_log(self) -> bool:
        trainer = self._trainer
        return trainer is not None and (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1) == 0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after backward (and after unscaling under 16-mixed), before clipping and the
        # optimizer step.
        guard = self.nonfinite_guard
        log = self._should_log()
        norm = None
        if log or guard.policy != "off":
            grads = [p.grad for p in optimizer_params(optimizer) if p.grad is not None]
            if grads:
                norm = total_norm(grads)
        if guard.policy != "off":
            guard.check(self, self._step_loss, self._step_terms, norm)
        if log:
            if norm is not None:
                self.log("train/grad_norm", norm)
            self.log("train/lr", optimizer.param_groups[0]["lr"])
        if log or guard.step_skipped:
            self.log("train/skipped_steps", float(guard.fold()))

    def on_train_end(self) -> None:
        self.nonfinite_guard.fold()

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip directly unless a float16 GradScaler is in play. Lightning's mixed-precision plugin refuses to
        clip for fused optimizers (they unscale internally) even under bf16, where nothing is scaled."""
        if not gradient_clip_val:  # None or 0: no clipping, as Lightning's own clipping reads it
            return
        if str(self.trainer.precision) in ("16-mixed", "16"):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grad_norm_(optimizer_params(optimizer), gradient_clip_val, foreach=True)
        else:
            torch.nn.utils.clip_grad_value_(optimizer_params(optimizer), gradient_clip_val, foreach=True)

    def configure_optimizers(self):
        factory = self.optimizer_factory
        keywords = getattr(factory, "keywords", {})
        accepts_fused = "fused" in inspect.signature(getattr(factory, "func", factory)).parameters
        if self.device.type == "cuda" and accepts_fused and keywords.get("fused") is None:
            factory = partial(factory, fused=True)  # one kernel for the whole update on the GPU
        optimizer = factory(params=self.net.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
