"""Step checkpoints written after the validation of their step, when one runs in it.

Lightning's ``ModelCheckpoint`` writes its every-N-steps checkpoint at the end of the training batch, before the
validation that the same step may run. A run killed during that validation (kill -9, a node lost) resumes from
that checkpoint, and Lightning, seeing a checkpoint taken before a due validation, skips it: the step's
validation row, sample grid and in-training Fréchet distance are missing from the run for good. This subclass
holds such a checkpoint until the validation has ended, then writes it: a kill during the validation resumes
from the previous checkpoint and runs the validation again, and a checkpoint always holds what came before it.

Which batches validate is Lightning's own decision (``_should_check_val_fx``, asked here as its loop asks it,
Lightning 2.6); a wall-time validation interval cannot be foretold, so with one the checkpoint is written where
Lightning writes it. Steps without a validation are written at the batch end as before.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["StepCheckpoint", "validation_follows"]


def validation_follows(trainer: L.Trainer) -> bool | None:
    """Whether the fit loop validates right after the training batch now ending (asked in its end hooks); None
    where that cannot be foretold (a wall-time validation interval)."""
    if trainer._val_check_time_interval is not None:
        return None
    if not trainer.enable_validation:
        return False
    fit_loop = trainer.fit_loop
    if fit_loop.epoch_loop._skip_next_val:  # set by the loop on a restart, or by Preemption
        return False
    return bool(fit_loop.epoch_loop._should_check_val_fx(fit_loop._data_fetcher))


class StepCheckpoint(ModelCheckpoint):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.after_validation = False  # a step checkpoint is due at the end of this step's validation

    def _step_checkpoint_due(self, trainer: L.Trainer) -> bool:
        every = self._every_n_train_steps
        return (
            every >= 1
            and trainer.global_step % every == 0
            and not self._should_skip_saving_checkpoint(trainer)
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (
            pl_module.automatic_optimization
            and self._step_checkpoint_due(trainer)
            and validation_follows(trainer)
        ):
            self.after_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self.after_validation:
            super().on_validation_end(trainer, pl_module)
            return
        self.after_validation = False
        if not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
