"""Which GPUs a sweep's jobs may use, and which are free: ``visible_gpus`` and ``GpuSlots``."""

# No `from __future__ import annotations` in this plugin package: Hydra executes plugin modules outside
# sys.modules, where dataclasses cannot resolve string annotations.
import os
import subprocess
from typing import Sequence  # noqa: UP035 (as the rest of the plugin)

__all__ = ["GpuSlots", "visible_gpus"]


def visible_gpus() -> list[str]:
    """The CUDA device ids a job may be given (entries of the parent's CUDA_VISIBLE_DEVICES when it is set)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and not [x for x in env.split(",") if x.strip()]:
        return []
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
            count = sum(line.startswith("GPU ") for line in out.splitlines())
        except (OSError, subprocess.SubprocessError):
            count = 0
    if env is not None:
        return [x.strip() for x in env.split(",") if x.strip()][:count]
    return [str(i) for i in range(count)]


class GpuSlots:
    """The free GPU slots of a sweep: each GPU of ``pool`` ``jobs_per_gpu`` times. Without GPUs (an empty pool,
    or ``gpus_per_job=0``) jobs take no slot and ``use_gpus`` is False."""

    def __init__(self, pool: Sequence[str], gpus_per_job: int, jobs_per_gpu: int) -> None:
        self.pool = list(pool)
        self.gpus_per_job = gpus_per_job
        self.jobs_per_gpu = jobs_per_gpu
        self.use_gpus = bool(self.pool) and gpus_per_job > 0
        if self.use_gpus and gpus_per_job > len(self.pool):
            raise ValueError(
                f"hydra.launcher.gpus_per_job={gpus_per_job} but only {len(self.pool)} GPU(s) are available"
            )
        self._free = self.pool * jobs_per_gpu if self.use_gpus else []

    def capacity(self, cpu_parallel: int) -> int:
        """Jobs the slots can hold at once (``cpu_parallel`` without GPUs)."""
        if not self.use_gpus:
            return cpu_parallel
        return len(self.pool) // self.gpus_per_job * self.jobs_per_gpu

    def can_take(self) -> bool:
        return not self.use_gpus or len(self._free) >= self.gpus_per_job

    def take(self) -> tuple[str, ...]:
        """The GPUs for the next job: the lowest free ones, or, when GPUs are shared, the one with the most
        free slots (so jobs spread over the GPUs before doubling up)."""
        if not self.use_gpus:
            return ()
        if self.jobs_per_gpu > 1:
            best = min(self._free, key=lambda g: (-self._free.count(g), self.pool.index(g)))
            self._free.remove(best)
            return (best,)
        gpus, self._free = tuple(self._free[: self.gpus_per_job]), self._free[self.gpus_per_job :]
        return gpus

    def release(self, gpus: Sequence[str]) -> None:
        # Kept in pool order: a job gets the lowest free GPUs (2-GPU jobs keep to the same pairs).
        if self.use_gpus:
            self._free = sorted(self._free + list(gpus), key=self.pool.index)
