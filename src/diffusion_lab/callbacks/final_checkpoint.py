"""Checkpoint the final step, however a fit ends: ``<run dir>/checkpoints/last.ckpt`` holds the step the summary,
the final samples and the metrics end at.

ModelCheckpoint writes last.ckpt with its step checkpoints (every N steps) and, at the end of fit, only if it
has written nothing in this fit: a run stopped by ``max_time``, or ``max_steps`` between two saves, would leave
last.ckpt some steps behind the weights it sampled from. This callback saves at the end of fit when last.ckpt
is not of the final step, and on an exception (a callback's error, Ctrl-C) before Lightning re-raises it (then
the run still fails: Ctrl-C exits 1, an error propagates) with a line saying where the checkpoint is.

Every save goes through ``trainer.save_checkpoint`` (the Trainer's checkpoint plugin: atomic, with a checksum).
At the end of fit the EMA callback has copied the average into the module; the saved ``state_dict`` is still the
average and ``current_model_state`` the live weights (see ``EMA.on_train_end``), as in every other checkpoint.
With several processes an exception is not saved: it may have stopped one rank only, and saving is collective.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L

__all__ = ["FinalCheckpoint", "save_last_checkpoint"]


def last_checkpoint_owners(trainer: L.Trainer, path: Path) -> list:
    """The ModelCheckpoint callbacks whose ``save_last`` file is ``path``."""
    owners = []
    for cb in trainer.checkpoint_callbacks:
        last = Path(cb.dirpath or "", f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}")
        if getattr(cb, "save_last", False) and last.resolve() == path.resolve():
            owners.append(cb)
    return owners


def save_last_checkpoint(trainer: L.Trainer, path: Path) -> None:
    """Save ``path`` (through the Trainer's checkpoint plugin) as ModelCheckpoint's last checkpoint of this step.

    Before saving, as ModelCheckpoint does, its ``last_model_path`` names the file (its state is part of the
    file). After saving, it is told that ``path`` is this step's last checkpoint; otherwise, if it has not saved
    yet in this fit, its ``on_train_end`` writes last.ckpt again, after the EMA weights were copied into the
    module. It is not told that it saved at this step (``_last_global_step_saved``): it would then skip its own
    step checkpoint when one falls due at this step (a preemption notice in that step), and the run would keep
    no ``step_*.ckpt`` of it. ``_last_checkpoint_saved`` is ModelCheckpoint's own bookkeeping (Lightning 2.6)."""
    owners = last_checkpoint_owners(trainer, path)
    for cb in owners:
        cb.last_model_path = str(path)
    trainer.save_checkpoint(path)
    for cb in owners:
        if hasattr(cb, "_last_checkpoint_saved"):
            cb._last_checkpoint_saved = str(path)


class FinalCheckpoint(L.Callback):
    def __init__(self, dirname: str = "checkpoints", filename: str = "last.ckpt"):
        self.dirname = dirname
        self.filename = filename
        self.saved_step: int | None = None  # the step last.ckpt holds, once this callback or another saved it

    def path(self, trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir) / self.dirname / self.filename

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A fresh fit has nothing to keep at step 0; a resumed one starts from a checkpoint of its step.
        self.saved_step = trainer.global_step

    def _saved_this_step(self, trainer: L.Trainer) -> bool:
        steps = {self.saved_step}
        for cb in last_checkpoint_owners(trainer, self.path(trainer)):
            steps.add(getattr(cb, "_last_global_step_saved", None))
        for cb in trainer.callbacks:  # a preemption notice saved last.ckpt at this step
            if getattr(cb, "checkpoint_path", None) == str(self.path(trainer)):
                steps.add(getattr(cb, "stopped_at_step", None))
        return trainer.global_step in steps

    def _save(self, trainer: L.Trainer) -> Path | None:
        if trainer.fast_dev_run or self._saved_this_step(
            trainer
        ):  # fast_dev_run: no checkpoints, as Lightning
            return None
        path = self.path(trainer)
        self._saving_step = trainer.global_step
        try:
            save_last_checkpoint(trainer, path)
        finally:
            self._saving_step = None
        self.saved_step = trainer.global_step
        return path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    # The logged step of a fit resumed from a checkpoint this callback wrote (at the end of fit, or on an
    # exception such as Ctrl-C, which may come in the next batch's hooks). Lightning (2.6) restarts as if every
    # checkpoint were written within a batch's end hooks, before its loop counted the batch in
    # ``_batches_that_stepped`` (the step metrics are logged at), and adds one on restart in some cases (a fit
    # that ended with its epoch, an exception in the next batch) but not others. The first batch after the
    # checkpoint's step logs at that step (metrics.csv continues from it): it is kept here and set back before
    # the first batch. (One optimizer step per counted batch: the global step is that count.)
    def state_dict(self) -> dict:
        step = getattr(self, "_saving_step", None)
        return {"batches_that_stepped": step} if step is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restore_batches_that_stepped = state_dict.get("batches_that_stepped")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        count = getattr(self, "_restore_batches_that_stepped", None)
        if count is not None:
            trainer.fit_loop.epoch_loop._batches_that_stepped = count
            self._restore_batches_that_stepped = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.world_size > 1 or trainer.state.fn != "fit" or not trainer.training:
            return
        try:
            path = self._save(trainer)
            # a checkpoint written in the background (BackgroundCheckpointIO) is on disk before it is named
            getattr(trainer.strategy.checkpoint_io, "wait", lambda: None)()
        except Exception as err:  # the original exception is the one to report
            print(f"\ncould not save {self.path(trainer)}: {err}", file=sys.stderr, flush=True)
            return
        path = self.path(trainer) if path is None and self.saved_step == trainer.global_step else path
        if path is not None and path.is_file() and trainer.is_global_zero:
            print(
                f"\n{type(exception).__name__} at step {trainer.global_step}: {path} holds that step; continue "
                f"with ckpt_path=last resume_dir={trainer.default_root_dir}",
                file=sys.stderr,
                flush=True,
            )
