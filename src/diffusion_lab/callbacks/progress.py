"""Lightning's TQDM progress bar, with the training loss read from the module at most a few times a second.

Lightning turns every metric logged with ``prog_bar=True`` into a Python number after *every* training step
(its logger connector calls ``.item()`` on each progress-bar metric's latest value, whether or not the bar
refreshes): a host-device sync per step. It drains the GPU's queue each step, and a CUDA-graphed step then waits
for the host to launch the next one -- it held Ho et al.'s UNet on an H200 at 83% of its raw step speed
(BENCHMARKS.md). ``train/loss`` is therefore logged without ``prog_bar`` and this bar reads the loss itself, when
it refreshes and at most every ``min_read_seconds`` (so even ``refresh_rate=1`` on a fast GPU costs at most a
few syncs a second; the loss shown can then be a few steps older than the step count).

The training bar counts optimizer steps out of the run's target, ``trainer.max_steps``, across epochs and
with an ETA (Lightning's counts the batches of the current epoch, and shows ``k/?`` after a resume); a run
resumed at step k starts the bar at k. Without ``max_steps`` it is Lightning's per-epoch bar.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar

__all__ = ["LossProgressBar"]


class LossProgressBar(TQDMProgressBar):
    def __init__(self, refresh_rate: int = 1, min_read_seconds: float = 0.5, **kwargs: Any):
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self.min_read_seconds = min_read_seconds
        self._loss: float | None = None
        self._read_at = float("-inf")

    def on_train_epoch_start(self, trainer, *args: Any) -> None:
        if trainer.max_steps is None or trainer.max_steps < 0:
            return super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # once per run: the same bar (and ETA) through every epoch
            bar.reset(total=trainer.max_steps)
            bar.initial = bar.n = bar.last_print_n = trainer.global_step  # the ETA counts this run's steps
            bar.refresh()
        bar.set_description(f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.max_steps is None or trainer.max_steps < 0:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            if not bar.disable:
                bar.n = trainer.global_step
                bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        now = monotonic()
        last_loss = getattr(pl_module, "last_loss", None)
        if callable(last_loss) and (self._loss is None or now - self._read_at >= self.min_read_seconds):
            self._loss, self._read_at = last_loss(), now
        if self._loss is not None:
            items["train/loss"] = self._loss
        return items
