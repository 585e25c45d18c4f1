"""Training throughput (images/s over whole optimizer steps), measured without per-step host syncs, and the
training time a fit spent beyond its steady-state steps (compilation, recompilation, CUDA-graph recording,
autotuning, checkpoint writes): what a cold start costs. Validation is left out of both and timed on its own,
each run apart, so a first validation that costs more than the others (kernels built on first use) shows.

The clock is read (after a device sync) only every ``window`` steps, so measuring does not slow the loop.
Lightning's ``ThroughputMonitor`` synchronizes on every batch; on a fast GPU that alone costs several percent.
"""

from __future__ import annotations

import statistics
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
        self.window_step_seconds: list[float] = []  # seconds per step of each timed window
        self._fit_t0: float | None = None
        self._fit_start_step = 0
        self._pause_t0: float | None = None
        self._paused = 0.0
        self.validation_seconds: list[float] = []  # each validation run of the fit, in order
        self.startup_seconds: float | None = None
        # From the start of training to the end of its first step.
        self.first_step_seconds: float | None = None

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self._fit_t0, self._fit_start_step, self._paused = time.perf_counter(), trainer.global_step, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.first_step_seconds is None and self._fit_t0 is not None:
            self._sync(pl_module)
            self.first_step_seconds = time.perf_counter() - self._fit_t0
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
            self.window_step_seconds.append(seconds / self._steps)
            pl_module.log("perf/train_img_per_s", self._images / seconds, rank_zero_only=True)
            self._t0, self._images, self._steps = time.perf_counter(), 0, 0

    def on_validation_start(self, trainer, pl_module) -> None:
        # The first validation hook: the EMA swap, sample grids and in-training FD run in later ones, all left out.
        self._t0 = None  # validation / sampling time is not training time
        if self._fit_t0 is not None and not trainer.sanity_checking:
            self._sync(pl_module)
            self._pause_t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._pause_t0 is not None:
            self._sync(pl_module)
            self.validation_seconds.append(time.perf_counter() - self._pause_t0)
            self._paused += self.validation_seconds[-1]
            self._pause_t0 = None

    def on_train_end(self, trainer, pl_module) -> None:
        """The startup cost: training time (validation excluded) minus the steps at the median window's pace."""
        if self._fit_t0 is None or not self.window_step_seconds:
            return
        self._sync(pl_module)
        trained = time.perf_counter() - self._fit_t0 - self._paused
        steps = trainer.global_step - self._fit_start_step
        self.startup_seconds = max(0.0, trained - steps * statistics.median(self.window_step_seconds))

    @property
    def images_per_second(self) -> float | None:
        return self.total_images / self.total_seconds if self.total_seconds > 0 else None
