"""A training callback for the SLURM tests: on a job's first run, hold at one step until a stop signal came.

At the end of step ``at_step`` it writes ``<run dir>/paused`` (the SLURM job id), then waits, up to
``timeout_s``, until the ``Preemption`` callback has received a signal. The test sees the file and preempts the
job the way it chooses (``scontrol requeue``, ``scancel --signal=...``): the job is stopped at a known step,
whatever the machine's speed. A restarted run (``SLURM_RESTART_COUNT`` set) does not hold.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L

from diffusion_lab.callbacks import Preemption
from hydra_plugins.diffusion_lab_launcher._slurm_job import job_id

PAUSED = "paused"


class PauseForSignal(L.Callback):
    def __init__(self, at_step: int, timeout_s: float = 120.0):
        self.at_step = at_step
        self.timeout_s = timeout_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.at_step or os.environ.get("SLURM_RESTART_COUNT"):
            return
        preemption = next(c for c in trainer.callbacks if isinstance(c, Preemption))
        Path(trainer.default_root_dir, PAUSED).write_text(job_id())
        deadline = time.time() + self.timeout_s
        while preemption.received is None and time.time() < deadline:
            time.sleep(0.05)
