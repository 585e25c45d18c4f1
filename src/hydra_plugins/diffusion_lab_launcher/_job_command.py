"""The command line of one job: how the application was started, the job's overrides, its own run directory
(a folder name safe to pass on as a quoted override) and the Hydra overrides that make it a plain single run."""

# No `from __future__ import annotations`: see _gpu_slots.py.
import hashlib
import os
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence  # noqa: UP035 (as the rest of the plugin)

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import filter_overrides
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion_lab.overrides import override_key, split_override
from hydra_plugins.diffusion_lab_launcher._job_results import SaveReturnValue

__all__ = [
    "app_command",
    "forwarded",
    "job_command",
    "job_config",
    "job_folder",
    "quote",
    "resume_overrides",
    "safe_subdir",
    "short_name",
    "varying_keys",
]

# Hydra overrides of the multirun that must not reach a job (a job is a plain single run).
NOT_FORWARDED = (
    "hydra.mode",
    "hydra.launcher",
    "hydra/launcher",
    "hydra.sweeper",
    "hydra/sweeper",
    "hydra.sweep",
    "hydra.run",
    "hydra.job.num",
    "hydra.job.id",
)
CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


def app_command(task_function: Optional[TaskFunction]) -> list[str]:
    """How to start the application again: ``python -m <module>`` (or the script), with its config flags."""
    return [*_interpreter_and_app(task_function), *_config_flags(sys.argv[1:])]


def _interpreter_and_app(task_function: Optional[TaskFunction]) -> list[str]:
    import __main__

    module = getattr(task_function, "__module__", None) or "__main__"
    # The task function belongs to __main__ (`python -m app` / `python app.py`), or __main__ imported it
    # (`python -m pkg` whose __main__.py calls pkg.cli.main): start __main__ again. Otherwise the multirun was
    # started from other code (a test calling the app's main): start the task function's module.
    in_main = module == "__main__" or any(
        v is task_function or getattr(v, "__wrapped__", None) is task_function
        for v in vars(__main__).values()
    )
    spec = getattr(__main__, "__spec__", None)
    if in_main and spec is not None and spec.name:
        return [sys.executable, "-m", spec.name.removesuffix(".__main__")]
    if in_main and sys.argv and Path(sys.argv[0]).is_file():
        return [sys.executable, str(Path(sys.argv[0]).resolve())]
    if module != "__main__":
        return [sys.executable, "-m", module]
    raise RuntimeError("gpu_pool: cannot tell how this application was started; run it with python -m")


def _config_flags(args: Sequence[str]) -> list[str]:
    """The ``--config-path``/``--config-name``/``--config-dir`` flags of the command line, with their values."""
    flags: list[str] = []
    for i, arg in enumerate(args):
        if arg.split("=", 1)[0] in CONFIG_FLAGS:
            if "=" in arg:
                flags.append(arg)
            elif i + 1 < len(args):
                flags += [arg, args[i + 1]]
    return flags


def forwarded(hydra_overrides: Iterable[str]) -> list[str]:
    """The multirun's Hydra overrides that a job keeps (not those that make it a multirun)."""
    return [o for o in hydra_overrides if not override_key(str(o)).startswith(NOT_FORWARDED)]


def job_command(
    app: Sequence[str], overrides: Sequence[str], hydra_overrides: Sequence[str], job_dir: Path, num: int
) -> list[str]:
    """``app`` run as a single run in ``job_dir`` as job ``num``, writing its return value (SaveReturnValue).
    ``hydra.mode=RUN``: a config that sets ``hydra.mode: MULTIRUN`` (a search config does) would otherwise make
    every job a sweep of its own."""
    callback = f"{SaveReturnValue.__module__}.{SaveReturnValue.__name__}"
    return [
        *app,
        *overrides,
        *hydra_overrides,
        "hydra.mode=RUN",
        f"hydra.run.dir={quote(str(job_dir))}",
        f"hydra.job.num={num}",
        f"hydra.job.id={num}",
        f"++hydra.callbacks.gpu_pool_return._target_={callback}",
    ]


def resume_overrides(overrides: Sequence[str]) -> list[str]:
    """A job's overrides to continue it: its own, from its newest checkpoint, its first record kept (a job
    restarted by SLURM, a job of a sweep continued with ``hydra.launcher.resume=true``)."""
    kept = [o for o in overrides if override_key(o) not in ("ckpt_path", "hydra.output_subdir")]
    return [*kept, "ckpt_path=last", "hydra.output_subdir=null"]


def quote(value: str) -> str:
    """A string as a quoted Hydra override value (paths hold ',' '=' '[' from override_dirname)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return "'" + value.replace("'", "\\'") + "'"


def varying_keys(job_overrides: Sequence[Sequence[str]]) -> set[str]:
    """Keys whose value differs between jobs, or that some job lacks (they name a job whose full
    override_dirname is too long for a folder name)."""
    values: dict[str, list[str]] = {}
    for overrides in job_overrides:
        for o in overrides:
            values.setdefault(override_key(o), []).append(o)
    return {k for k, v in values.items() if len(set(v)) > 1 or len(v) < len(job_overrides)}


def short_name(num: int, overrides: Iterable[str], varying: set[str]) -> str:
    """``<num>_<the overrides of varying keys, without prefixes>``: a job's folder name when the full one is
    too long."""
    parts = []
    for o in overrides:
        key, value = split_override(o)
        if key in varying:
            parts.append(key if value is None else f"{key}={value}")
    return f"{num}_{','.join(sorted(parts))}" if parts else str(num)


def _shorten(text: str, limit: int) -> str:
    if len(text.encode()) <= limit:
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    return text.encode()[: limit - 11].decode(errors="ignore") + "_" + digest


def safe_subdir(subdir: str, short: str, limit: int = 200) -> str:
    """``subdir`` with each component longer than ``limit`` bytes (file systems allow 255; override_dirname of a
    long command line) replaced by ``short`` (the job number and the overrides that vary across the sweep),
    shortened with a hash if it is still too long. Quote characters are dropped (``trainer.max_time='00:03:00'``
    names a folder ``...max_time=00:03:00``): a path holding them cannot be passed on as a quoted override."""
    parts = [_shorten(short, limit) if len(p.encode()) > limit else p for p in Path(subdir).parts]
    parts = [p.replace("'", "").replace('"', "") for p in parts]
    return str(Path(*parts)) if parts else subdir


def job_config(
    hydra_context: HydraContext, config: DictConfig, num: int, overrides: Sequence[str]
) -> DictConfig:
    """The config of sweep job ``num`` (the multirun's ``config`` with the job's ``overrides``)."""
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = num
        sweep_config.hydra.job.num = num
        # A path in an override value (features=/a/b.pt) must not nest the job directory.
        dirname = str(sweep_config.hydra.job.override_dirname)
        sweep_config.hydra.job.override_dirname = dirname.replace(os.sep, "_")
    return sweep_config


def _job_subdir(sweep_config: DictConfig) -> str:
    previous = HydraConfig.instance().cfg
    # ${hydra:...} in the subdir resolves against this job's config.
    HydraConfig.instance().set_config(sweep_config)
    try:
        return str(OmegaConf.select(sweep_config, "hydra.sweep.subdir"))
    finally:
        HydraConfig.instance().cfg = previous


def job_folder(sweep_config: DictConfig, num: int, overrides: Sequence[str], varying: set[str]) -> str:
    """The job's folder in the sweep directory: ``hydra.sweep.subdir``, named by the varying overrides
    (``short_name``) where that is too long for a folder name (``safe_subdir``)."""
    short = short_name(num, filter_overrides(overrides), varying)
    return safe_subdir(_job_subdir(sweep_config), short)
