"""OmegaConf resolvers the configs use (registered when ``diffusion_lab`` is imported).

``${dl.or:a,b,...}``      the first argument that is neither null nor empty (e.g. a W&B run name for a run
                          without overrides, whose ``hydra:job.override_dirname`` is empty).
``${dl.sweep_group:name}`` ``name`` in a single run; ``<name>-<sweep dir name>`` in a job of a sweep (the gpu_pool
                          launcher tells its job subprocesses the sweep directory; Hydra's in-process
                          launchers have ``hydra.sweep.dir``), so the runs of one sweep share a W&B group.
``${dl.quality_monitor:features}`` the logged key of the training callback's Fréchet distance on those features
                          (``metrics/fid`` on inception, ``metrics/fd_classifier`` on a classifier file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .score_names import quality_monitor

__all__ = ["register_resolvers", "first_nonempty", "sweep_group"]

SWEEP_DIR_ENV = "DIFFUSION_LAB_SWEEP_DIR"  # set by hydra_plugins.diffusion_lab_launcher for each job


def first_nonempty(*values: Any) -> Any:
    for value in values:
        if value is not None and str(value) != "":
            return value
    return values[-1] if values else None


def _sweep_dir() -> str | None:
    if os.environ.get(SWEEP_DIR_ENV):
        return os.environ[SWEEP_DIR_ENV]
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return str(HydraConfig.get().sweep.dir)
    except Exception:
        return None
    return None


def sweep_group(name: Any) -> str:
    sweep = _sweep_dir()
    return f"{name}-{Path(sweep).name}" if sweep else str(name)


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("dl.or", first_nonempty, replace=True)
    OmegaConf.register_new_resolver("dl.sweep_group", sweep_group, replace=True)
    OmegaConf.register_new_resolver("dl.quality_monitor", quality_monitor, replace=True)
