"""A sample grid from the EMA network at every validation, written to the run directory and to the loggers."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from ..io import save_grid

__all__ = ["SampleGrid"]


class SampleGrid(L.Callback):
    """Runs at the start of each validation epoch, when the EMA callback (listed before this one) has swapped
    the averaged weights in. The same initial noise every time, so grids are comparable across steps."""

    def __init__(self, n: int = 64, dirname: str = "samples", seed: int = 0, batch_size: int = 256):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(
                f"callbacks.sample_grid.n={n!r} is invalid: it must be an integer >= 1 (callbacks.sample_grid=null: "
                "no grid)"
            )
        self.n = n
        self.dirname = dirname
        self.seed = seed
        self.batch_size = batch_size
        self.last_path: Path | None = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not pl_module.data_shape or len(pl_module.data_shape) != 3:
            return
        if not hasattr(pl_module, "generate"):  # a model that does not sample (an autoencoder)
            return
        # Samples on every rank would be identical work; rank 0 writes the preview.
        if trainer.global_rank != 0:
            return
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        labels, nrow = None, None
        if pl_module.num_classes:  # a class per row
            nrow = -(-self.n // pl_module.num_classes)
            labels = torch.arange(self.n, device=pl_module.device) // nrow
        images = pl_module.generate(self.n, batch_size=self.batch_size, generator=gen, labels=labels)
        out_dir = Path(trainer.default_root_dir) / self.dirname
        self.last_path = save_grid(images, out_dir / f"step_{trainer.global_step:07d}.png", nrow=nrow)
        for logger in trainer.loggers:
            log_image = getattr(logger, "log_image", None)
            if callable(log_image):  # wandb
                log_image(key="samples", images=[str(self.last_path)], step=trainer.global_step)
            elif hasattr(logger, "experiment") and hasattr(logger.experiment, "add_image"):  # tensorboard
                from torchvision.io import read_image

                logger.experiment.add_image("samples", read_image(str(self.last_path)), trainer.global_step)
