"""Train a diffusion model.

    python -m diffusion_lab.train                                   # the defaults, on a GPU where there is one
    python -m diffusion_lab.train schedule=cosine loss=vlb           # any option of any group
    python -m diffusion_lab.train experiment=fmnist trainer=gpu      # a preset study
    python -m diffusion_lab.train ckpt_path=last resume_dir=outputs/<task_name>/runs/<time>   # exact resume
    python -m diffusion_lab.train -m schedule=linear,cosine loss=simple,hybrid,vlb      # a sweep

At the end it prints where the run directory, the checkpoint, the sample grid and the metrics are.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from .cli import CONFIG_DIR, command, experiment_summaries
from .errors import UserError
from .overrides import override_key
from .resume import resume_argv

__all__ = ["train", "main", "objective", "compose_config", "CONFIG_DIR"]


def compose_config(
    overrides: Iterable[str] = (), output_dir: str | Path | None = None, config_name: str = "train"
) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, composed as ``@hydra.main`` would, for calling
    :func:`train` from Python (tests, benchmarks, notebooks): the hydra node is registered with ``HydraConfig``
    (so ``${hydra:...}`` interpolations resolve) and then removed, as in a real run; ``paths.output_dir`` is set
    to ``output_dir`` when given."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build everything from ``cfg``, fit, write final samples; returns the paths and final metrics
    (:func:`diffusion_lab.training.train`). Its imports (Lightning, torch, the networks: several seconds) load on
    the first call, after Hydra has composed the command line, so a mistyped option fails in about a second, and
    so do the checks that need no Lightning (``check_early``)."""
    check_early(cfg)
    from .training import train as run_training

    return run_training(cfg)


def check_early(cfg: DictConfig) -> None:
    """A new run's checks that need neither Lightning nor the data: its values' types and ranges (about a second:
    no torch yet), then its process and the parts that must fit it (torch and the parts alone). A resume
    (``ckpt_path=last``) runs the config its run stored, read and checked once Lightning has loaded."""
    if cfg.get("ckpt_path") == "last":
        return
    from .config_checks import check_values

    check_values(cfg)
    from .process_parts import check_training_parts

    check_training_parts(cfg)


def usage() -> str:
    """This module's docstring and the experiments, one line each (``--help``)."""
    names = experiment_summaries()
    width = max(len(name) for name, _ in names)
    lines = [f"  {name:<{width}}  {what}" for name, what in names]
    return "\n".join([__doc__.strip(), "", "== Experiments (experiment=NAME) ==", *lines])


def process_group_hint(key: str) -> str | None:
    """The message for a group only a process brings (``degradation=`` without ``process=cold``)."""
    if override_key(key).split(".")[0] == "degradation":
        return "degradation= chooses cold diffusion's degradation: add process=cold (process=cold degradation=mask)"
    return None


@command("train", usage=usage(), unknown_key=process_group_hint)
def main(cfg: DictConfig) -> float | None:
    try:
        result = train(cfg)
    finally:
        # One failed job must not break the rest of a multirun: close any W&B run it opened.
        if "wandb" in sys.modules:
            import wandb

            wandb.finish()
    if result.get("preempted", {}).get("signal") == "SIGINT":
        raise SystemExit(1)  # Ctrl-C: saved and recorded as interrupted, and a sweep stops, as at any Ctrl-C
    return objective(cfg, result["metrics"])


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """What a run hands back to a sweeper: the metric named by ``optimized_metric`` (``val/loss`` when it is
    null). A non-finite value is returned as +inf, so an optimising sweeper ranks the run last instead of
    failing the study (Optuna refuses NaN); a name the run did not record is a one-line error."""
    name = cfg.get("optimized_metric")
    if name is None:
        return metrics.get("val/loss")
    if name not in metrics:
        raise UserError(
            f"optimized_metric={name} was not recorded by this run; it recorded: {', '.join(sorted(metrics))}"
        )
    value = metrics[name]
    return value if math.isfinite(value) else float("inf")


if __name__ == "__main__":
    sys.argv = resume_argv(sys.argv)  # a resume runs in its own run directory
    # The package's own `main`, not this `__main__` copy: a launcher that pickles the task to run it elsewhere
    # (SLURM through submitit) then pickles a reference to an importable function, not this module's globals.
    from diffusion_lab.train import main as importable_main

    importable_main()
