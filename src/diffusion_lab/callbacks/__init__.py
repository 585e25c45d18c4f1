"""Training callbacks: EMA of the weights and sample grids (metrics live in ``diffusion_lab.metrics``)."""

from __future__ import annotations

from .ema import EMA
from .final_checkpoint import FinalCheckpoint
from .preemption import Preemption
from .progress import LossProgressBar
from .sample_grid import SampleGrid
from .sample_quality import SampleQualityCallback
from .step_checkpoint import StepCheckpoint
from .throughput import Throughput

__all__ = [
    "EMA",
    "FinalCheckpoint",
    "LossProgressBar",
    "Preemption",
    "SampleGrid",
    "SampleQualityCallback",
    "StepCheckpoint",
    "Throughput",
]
