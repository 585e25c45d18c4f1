"""Lightning's TQDM progress bar, with the training loss read from the module only when the bar refreshes.

Lightning turns every metric logged with ``prog_bar=True`` into a Python number after *every* training step
(its logger connector calls ``.item()`` on each progress-bar metric's latest value, whether or not the bar
refreshes): a host-device sync per step. It drains the GPU's queue each step, and a CUDA-graphed step then waits
for the host to launch the next one -- it held Ho et al.'s UNet on an H200 at 83% of its raw step speed
(BENCHMARKS.md). ``train/loss`` is therefore logged without ``prog_bar`` and this bar reads the loss itself.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar

__all__ = ["LossProgressBar"]


class LossProgressBar(TQDMProgressBar):
    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        last_loss = getattr(pl_module, "last_loss", None)
        loss = last_loss() if callable(last_loss) else None
        if loss is not None:
            items["train/loss"] = loss
        return items
