"""EMA of the network weights, on Lightning's ``WeightAveraging``.

Lightning's ``EMAWeightAveraging`` updates parameters one by one in Python; this subclass hands torch's
``AveragedModel`` a *multi-tensor* EMA (``torch._foreach_lerp_``), one fused kernel per step on the GPU.
Everything else — swapping the average in for validation, saving it as the checkpoint's ``state_dict``
(with the live weights under ``current_model_state``) and restoring both on resume — is Lightning's, with
one fix: a checkpoint written at the end of training keeps the live weights (see ``on_train_end``).
The diffusion schedule is a plain object, not a buffer, so the average can never touch it.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

__all__ = ["EMA"]


class _EMAUpdate:
    """torch's multi-tensor EMA update as a picklable object: ``get_ema_multi_avg_fn`` returns a closure, and
    ``strategy=ddp_spawn`` pickles the callbacks (with their ``multi_avg_fn``) to start its processes."""

    def __init__(self, decay: float):
        self.decay = decay

    def __call__(self, ema_param_list, current_param_list, num_averaged) -> None:
        get_ema_multi_avg_fn(self.decay)(ema_param_list, current_param_list, num_averaged)


class EMA(WeightAveraging):
    def __init__(
        self, decay: float = 0.9999, update_every_n_steps: int = 1, start_step: int = 0, warmup: bool = False
    ):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"callbacks.ema.decay={decay!r} is invalid: the EMA decay must be in [0, 1)")
        super().__init__(use_buffers=True, multi_avg_fn=_EMAUpdate(decay))
        self.decay = decay
        # warmup: the k-th update (k = 1, 2, ...) uses min(decay, (1 + k) / (10 + k)), so an average of a short
        # run is not dominated by the initial weights (with decay 0.9999 and no warmup, 74% of the average
        # after 3000 steps is still the step-0 network).
        self.warmup = warmup
        self.update_every_n_steps = max(1, update_every_n_steps)
        self.start_step = start_step
        self._live_state: dict[str, Any] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning's hook calls AveragedModel.update_parameters, which rebuilds and regroups the parameter
        # lists on every step: host time that a CUDA-graphed training step cannot hide (about 12% of the
        # step on an H200). Same arithmetic (copy on the first update, then lerp by 1 - decay), lists built once.
        step_idx = trainer.global_step - 1
        if getattr(pl_module, "step_skipped", False):
            # The module dropped this step's update (non-finite loss or gradients, see DiffusionModule): the
            # weights did not move, so there is nothing to average; global_step still advanced.
            self._latest_update_step = trainer.global_step
            return
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=step_idx):
            self._update(pl_module)
            self._latest_update_step = trainer.global_step

    def _update(self, pl_module) -> None:
        average = self._average_model
        if getattr(self, "_pairs", None) is None:
            ema = [*average.module.parameters(), *average.module.buffers()]
            live = [*pl_module.parameters(), *pl_module.buffers()]
            floats = [(e.detach(), v.detach()) for e, v in zip(ema, live) if e.is_floating_point()]
            others = [(e.detach(), v.detach()) for e, v in zip(ema, live) if not e.is_floating_point()]
            self._pairs = ([e for e, _ in floats], [v for _, v in floats], others)
            # One host read, at the first update only (also after a resume: n_averaged is checkpointed).
            self._count = int(average.n_averaged.item())
        ema, live, others = self._pairs
        if self._count > 0:
            torch._foreach_lerp_(ema, live, 1.0 - self.decay_at(self._count))
        else:
            torch._foreach_copy_(ema, live)
        self._count += 1
        for e, v in others:
            e.copy_(v)
        average.n_averaged += 1

    def decay_at(self, count: int) -> float:
        """The decay of the update after ``count`` earlier ones (the first, count 0, copies the weights)."""
        return min(self.decay, (1.0 + count) / (10.0 + count)) if self.warmup else self.decay

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return (
            step_idx is not None and step_idx >= self.start_step and step_idx % self.update_every_n_steps == 0
        )

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning copies the average into the module here, and ModelCheckpoint (always run after us) may then
        # still write last.ckpt (save_last when no checkpoint was written at the final step, e.g. a max_time
        # stop): keep the live weights for its current_model_state, or a resume would continue from the EMA.
        self._live_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._live_state is not None and "current_model_state" in checkpoint:
            checkpoint["current_model_state"] = self._live_state

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._live_state = None
        self._pairs = None
        super().teardown(trainer, pl_module, stage)
