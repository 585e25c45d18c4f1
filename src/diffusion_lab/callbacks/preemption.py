"""Stop cleanly on SIGTERM / SIGUSR1 (a scheduler's preemption notice): checkpoint, stop, exit 0. Ctrl-C
(SIGINT) during the fit stops the same way, then exits 1 as an interrupted command does.

On the signal the handler only sets a flag. At the next training-batch end (after the EMA has averaged that
step) the callback writes ``<run dir>/checkpoints/last.ckpt`` (atomically, through the Trainer's checkpoint
plugin: ``final_checkpoint.save_last_checkpoint``), sets ``trainer.should_stop`` and records why; ``training.py``
then skips the final samples and prints how to resume (``ckpt_path=last resume_dir=<run dir>``). A second
signal changes nothing, except a second Ctrl-C, which stops at once as Ctrl-C does without this callback
(Lightning saves last.ckpt of the current step through ``FinalCheckpoint``, with the RNG and the loader as they
are then, so that resume is not exact). Why Ctrl-C waits for the step's end: pressed mid-step, the step's noise
and timesteps are drawn and the next batch is fetched, so a checkpoint then would resume with other random draws
and one batch skipped; at the batch end the state is that of a step checkpoint. SIGKILL cannot be caught (the
periodic step checkpoints cover it). A signal that comes after the fit, while ``training.py`` writes the final
samples (``Preemption.after_fit``), stops them at once: last.ckpt holds every step, the run is recorded as
stopped by the signal, and its resume writes the samples.

Interplay with Lightning (2.6):

* Lightning installs its own SIGTERM handler when fit starts: it sets ``trainer.received_sigterm`` and then
  raises ``SIGTERMException`` at the end of the batch — without saving anything. This callback installs its
  handler afterwards (``on_train_start``) and takes SIGTERM over for the rest of fit, restoring the previous
  handler at the end. Like Lightning's, it forwards the signal to the processes Lightning's DDP launcher started.
* Under SLURM (``SLURMEnvironment`` detected) Lightning owns the requeue signal (SIGUSR1 by default): it saves
  ``hpc_ckpt_<n>.ckpt`` and runs ``scontrol requeue``. This callback then leaves SIGUSR1 alone and handles only
  SIGTERM (which SLURM sends when the grace time is up, or when it requeues the job), so there is no fight over
  the signal. The SLURM launcher turns submitit's notice (SIGUSR2) into a SIGTERM and reads
  ``stopped_by_signal()`` to requeue a stopped job.
* With several processes, the ranks agree before stopping (one all-reduce of a flag every
  ``sync_every_n_steps`` steps), so they all save and stop at the same step; a single process checks its flag
  every step (free: no device sync).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment

from .final_checkpoint import save_last_checkpoint
from .step_checkpoint import validation_follows

__all__ = ["Preemption", "StoppedBySignal", "stopped_by_signal"]

# The signal that stopped the latest fit of this process, None when it ran to its end. A launcher that runs the
# task in its own process reads it after the task returns, to tell a finished job from one that was asked to
# stop (the SLURM launcher requeues the latter: hydra_plugins/diffusion_lab_launcher/slurm_launcher.py).
_stopped_by: str | None = None


def stopped_by_signal() -> str | None:
    """The name of the signal that stopped this process's latest fit (``"SIGTERM"``), or None."""
    return _stopped_by


class StoppedBySignal(Exception):
    """A preemption signal that came after the fit (``Preemption.after_fit``); ``signal_name`` names it."""

    def __init__(self, signal_name: str):
        super().__init__(f"{signal_name} received after the fit")
        self.signal_name = signal_name


class Preemption(L.Callback):
    def __init__(
        self,
        signals: list[str] | tuple[str, ...] = ("SIGTERM", "SIGUSR1"),
        interrupt: bool = True,
        dirname: str = "checkpoints",
        filename: str = "last.ckpt",
        sync_every_n_steps: int = 10,
    ):
        self.signal_names = [str(s).upper() for s in signals]
        unknown = [s for s in self.signal_names if not hasattr(signal, s)]
        if unknown:
            raise ValueError(
                f"callbacks.preemption.signals: unknown signal(s) {unknown}; e.g. [SIGTERM, SIGUSR1]"
            )
        self.interrupt = bool(interrupt)  # Ctrl-C finishes the step and saves, as the signals above do
        self.dirname = dirname
        self.filename = filename
        self.sync_every_n_steps = max(1, int(sync_every_n_steps))
        self.received: int | None = None  # the signal number, once one arrived
        self.stopped_at_step: int | None = None
        self.checkpoint_path: str | None = None
        self._previous: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None

    # ------------------------------------------------------------------ signal handling
    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.received).name if self.received is not None else None

    def _handler(self, signum: int, frame) -> None:
        first = self.received is None
        if signum == signal.SIGINT:
            self._on_interrupt(first)
        if first:
            self.received = signum
        trainer = self._trainer
        # SIGINT is not passed on: a terminal sends it to every process of the job already.
        if first and trainer is not None and signum != signal.SIGINT:
            launcher = getattr(trainer.strategy, "launcher", None)
            kill = getattr(launcher, "kill", None)
            if callable(kill):  # DDP started the other ranks as child processes: pass the notice on
                with contextlib.suppress(Exception):
                    kill(signum)

    @staticmethod
    def _on_interrupt(first: bool) -> None:
        """Ctrl-C: the first asks for a stop at the step's end (after a stop was asked already, it stops at once);
        the next one raises KeyboardInterrupt at once, as Python's own handler does."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if not first:
            raise KeyboardInterrupt
        print(
            "\nCtrl-C: finishing this step, saving a checkpoint and stopping (Ctrl-C again stops at once,"
            " without an exact resume)",
            file=sys.stderr,
            flush=True,
        )

    def _signals_to_handle(self) -> list[int]:
        nums = [int(getattr(signal, name)) for name in self.signal_names]
        if self.interrupt and signal.SIGINT not in nums:
            nums.append(int(signal.SIGINT))
        if SLURMEnvironment.detect():  # Lightning's auto-requeue owns SIGUSR1 (see the module doc)
            nums = [n for n in nums if n != signal.SIGUSR1]
        return nums

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        global _stopped_by
        self.received, self.stopped_at_step, self.checkpoint_path = None, None, None
        _stopped_by = None
        self._trainer = trainer
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None and getattr(connector, "received_sigterm", False):
            # SIGTERM came between Lightning's handler and ours (sanity check, restore): take it over, or
            # Lightning raises SIGTERMException at the first batch end without saving.
            self.received = int(signal.SIGTERM)
            connector.received_sigterm = False
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for signum in self._signals_to_handle():
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def _restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        self._trainer = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()

    @contextlib.contextmanager
    def after_fit(self) -> Iterator[None]:
        """While the block runs (the final samples, after Lightning has put back the default handlers), a
        preemption signal raises ``StoppedBySignal`` at once: its default action would kill the process with
        its run recorded as still running and no resume command, in the grace time a scheduler gives."""
        global _stopped_by
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum: int, frame) -> None:
            raise StoppedBySignal(signal.Signals(signum).name)

        previous: dict[int, Any] = {}
        try:
            for signum in self._signals_to_handle():
                previous[signum] = signal.signal(signum, stop)
            yield
        except StoppedBySignal as err:
            _stopped_by = err.signal_name  # a launcher requeues the job, as for a stop within the fit
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    # ------------------------------------------------------------------ stopping
    def _should_stop(self, trainer: L.Trainer) -> bool:
        if trainer.world_size == 1:
            return self.received is not None
        if trainer.global_step % self.sync_every_n_steps:
            return False
        # All ranks reach this at the same step; any rank's signal stops them all.
        return trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        global _stopped_by
        if self.stopped_at_step is not None or not self._should_stop(trainer):
            return
        path = Path(trainer.default_root_dir) / self.dirname / self.filename
        save_last_checkpoint(trainer, path)
        # Asked before should_stop is set, which makes a validation due at any step.
        skip_validation = validation_follows(trainer) is False
        trainer.should_stop = True
        if skip_validation:
            # Lightning validates a fit stopped early at any step; here that would spend the grace time on a
            # validation off the schedule (minutes with an in-training FID). One on the schedule still runs.
            trainer.fit_loop.epoch_loop._skip_next_val = True
        self.stopped_at_step = trainer.global_step
        self.checkpoint_path = str(path)
        if self.received is None:  # another rank got the signal
            self.received = int(signal.SIGTERM)
        _stopped_by = self.signal_name
        if trainer.is_global_zero:
            print(
                f"\n{self.signal_name} received: saved {path} at step {trainer.global_step}; stopping.",
                file=sys.stderr,
                flush=True,
            )

    def state_dict(self) -> dict[str, Any]:
        return {}
