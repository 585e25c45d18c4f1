"""EMA of the network weights, on Lightning's ``WeightAveraging``.

Lightning's ``EMAWeightAveraging`` updates parameters one by one in Python; this subclass hands torch's
``AveragedModel`` a *multi-tensor* EMA (``torch._foreach_lerp_``), one fused kernel per step on the GPU.
Everything else — swapping the average in for validation, saving it as the checkpoint's ``state_dict``
(with the live weights under ``current_model_state``) and restoring both on resume — is Lightning's.
The diffusion schedule is a plain object, not a buffer, so the average can never touch it.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

__all__ = ["EMA"]


class EMA(WeightAveraging):
    def __init__(self, decay: float = 0.9999, update_every_n_steps: int = 1, start_step: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"callbacks.ema.decay={decay!r} is invalid: the EMA decay must be in [0, 1)")
        super().__init__(use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.decay = decay
        self.update_every_n_steps = max(1, update_every_n_steps)
        self.start_step = start_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return (
            step_idx is not None and step_idx >= self.start_step and step_idx % self.update_every_n_steps == 0
        )
