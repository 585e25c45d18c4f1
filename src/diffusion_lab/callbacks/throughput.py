"""Training throughput (images/s over whole optimizer steps), measured without per-step host syncs.

The clock is read (after a device sync) only every ``window`` steps, so measuring does not slow the loop.
Lightning's ``ThroughputMonitor`` synchronizes on every batch; on a fast GPU that alone costs several percent.
"""

from __future__ import annotations

import time

import lightning as L
import torch

__all__ = ["Throughput"]


class Throughput(L.Callback):
    def __init__(self, window: int = 50, warmup_steps: int = 20):
        self.window = max(1, window)
        self.warmup_steps = warmup_steps
        self._t0: float | None = None
        self._images = 0
        self._steps = 0
        self.total_images = 0
        self.total_seconds = 0.0

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step < self.warmup_steps:  # compile / autotune / allocator warm-up
            return
        x = batch[0] if isinstance(batch, list | tuple) else batch
        self._images += x.shape[0] * trainer.world_size
        self._steps += 1
        if self._t0 is None:
            self._sync(pl_module)
            self._t0, self._images, self._steps = time.perf_counter(), 0, 0
            return
        if self._steps >= self.window:
            self._sync(pl_module)
            seconds = time.perf_counter() - self._t0
            self.total_images += self._images
            self.total_seconds += seconds
            pl_module.log("perf/train_img_per_s", self._images / seconds, rank_zero_only=True)
            self._t0, self._images, self._steps = time.perf_counter(), 0, 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = None  # validation / sampling time is not training time

    @property
    def images_per_second(self) -> float | None:
        return self.total_images / self.total_seconds if self.total_seconds > 0 else None
