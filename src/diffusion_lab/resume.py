"""Continue a run: ``ckpt_path=last resume_dir=RUN`` trains on in RUN with RUN's own config.

* The config is the one RUN stored when it started (``RUN/.hydra/config.yaml``: Hydra writes it, ``train()``
  writes it for runs started from Python). Overrides given at resume that only say how long to train, what to
  log, how often, and what to write at the end (``RESUMABLE``) are applied to it; any other override that would
  change the stored config (the model, the diffusion process, the data, the seed, the optimizer...) is refused
  in one line naming the key. Overrides equal to the stored values (the command printed at a preemption repeats
  the run's own) are accepted.
* RUN keeps its record: each resume writes ``RUN/.hydra/resume_<n>/overrides.yaml`` (its overrides),
  ``config.yaml`` (the config it ran) and ``provenance.yaml`` (the code digest and versions it ran with: code
  changed between a run and its resume shows there) beside the original ``.hydra/config.yaml`` and
  ``provenance.yaml``, which are never rewritten.
* From the command line, ``resume_argv`` points Hydra at RUN (``hydra.run.dir``) with no ``.hydra`` output of its
  own, so a resume opens no new run directory: checkpoints, metrics.csv and the log stay in RUN.
* A new run is never started in a folder that holds one (``check_new_run_dir``): it would overwrite that run's
  checkpoints, delete its metrics.csv (Lightning's CSV logger does) and, from the command line, Hydra would
  already have replaced its ``.hydra`` record, so ``ExistingRunCheck`` refuses it before Hydra writes anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from .errors import UserError, refuse
from .overrides import override_key
from .provenance import run_provenance
from .run_lock import check_not_in_use

__all__ = [
    "RESUMABLE",
    "ExistingRunCheck",
    "check_new_run_dir",
    "checkpoints_in",
    "continue_run",
    "record_run",
    "resume_argv",
]

# What a resume may change: a key itself or anything under it.
RESUMABLE = (
    "ckpt_path",
    "resume_dir",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.max_epochs",
    "trainer.val_check_interval",
    "trainer.limit_val_batches",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.num_sanity_val_steps",
    "final_samples",
    "sampler",
    "logger",
    "callbacks",
    "progress_refresh_rate",
    "compile",
    "data.num_workers",
    "data.root",
    "paths",
)
STORED = Path(".hydra") / "config.yaml"
HYDRA_RECORD = Path(".hydra") / "hydra.yaml"  # Hydra's own record of a command-line run
CHOICES = Path(".hydra") / "choices.yaml"  # the group options of a run started from Python
PROVENANCE = "provenance.yaml"  # beside each config.yaml: the code digest, versions, host and start time


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE)


def _leaves(cfg: DictConfig) -> dict[str, object]:
    """``{dotted key: value}`` of every leaf, unresolved (interpolations compare as written)."""
    out: dict[str, object] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def _given_overrides() -> list[str]:
    """The overrides this config was composed with (command line or ``compose_config``)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _given_choices() -> dict[str, str | None]:
    """The option of each config group this config was composed with (``{"schedule": "linear", ...}``)."""
    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def _stored_choices(run: Path) -> dict | None:
    """The options RUN was composed with: Hydra's record of a command-line run, ``record_run``'s of another."""
    if (run / HYDRA_RECORD).is_file():
        return dict(OmegaConf.load(run / HYDRA_RECORD).hydra.runtime.choices)
    if (run / CHOICES).is_file():
        return dict(OmegaConf.load(run / CHOICES))
    return None


def check_overrides(cfg: DictConfig, stored: DictConfig, overrides: list[str], run: Path) -> None:
    """Refuse, in one line naming the key, an override that changes what ``RESUMABLE`` does not cover: a group
    option (``schedule=cosine``, ``experiment=...``) other than the run's, or a value other than the run's."""
    given, kept = _leaves(cfg), _leaves(stored)
    choices, stored_choices = _given_choices(), _stored_choices(run) or {}
    for override in overrides:
        key = override_key(override)
        if _resumable(key):
            continue
        if key in choices and key in stored_choices:
            changed = [key] if choices[key] != stored_choices[key] else []
            was = stored_choices[key]
        else:
            changed = sorted(
                k
                for k in set(given) | set(kept)
                if (k == key or k.startswith(key + ".")) and not _resumable(k) and given.get(k) != kept.get(k)
            )
            was = kept.get(changed[0], "<unset>") if changed else None
        if changed:
            raise UserError(
                f"{override}: cannot change {changed[0]} (the run in {run} has {was!r}) when resuming; a resume "
                f"may change only {', '.join(RESUMABLE[2:])}; start a new run for another {key}"
            )


def continue_run(cfg: DictConfig) -> tuple[DictConfig, list[str] | None]:
    """The config to run and, for a resume, its overrides: ``cfg`` itself (and None), or for ``ckpt_path=last``
    the config stored by the run resumed (``resume_dir``, else this run's directory; ``cfg`` if it stored none)
    with the resumable overrides applied, in that run's directory."""
    if cfg.get("ckpt_path") != "last":
        return cfg, None
    run = Path(cfg.get("resume_dir") or cfg.paths.output_dir)
    stored = OmegaConf.load(run / STORED) if (run / STORED).is_file() else cfg
    overrides = _given_overrides()
    check_overrides(cfg, stored, overrides, run)
    resumed = stored.copy()
    with open_dict(resumed):
        for override in overrides:
            key = override_key(override)
            if _resumable(key) and override.startswith("~"):
                _remove(resumed, key)
            elif _resumable(key):
                OmegaConf.update(resumed, key, OmegaConf.select(cfg, key), merge=False, force_add=True)
        resumed.ckpt_path, resumed.resume_dir = "last", str(run)
        resumed.paths.output_dir = str(run)
    return resumed, overrides


def _remove(cfg: DictConfig, key: str) -> None:
    """Delete the dotted ``key`` from ``cfg`` where it is (a ``~key`` override: a callback or logger left out of
    the resumed part of a run)."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if isinstance(parent, DictConfig) and leaf in parent:
        del parent[leaf]


def record_run(cfg: DictConfig, output_dir: Path, resume_overrides: list[str] | None) -> None:
    """A fresh run's config in ``output_dir/.hydra/config.yaml`` (Hydra has written it for a command-line run; a
    run started from Python gets the same record) and its provenance beside it, never rewritten; a resume's
    overrides, config and provenance in ``.hydra/resume_<n>/``."""
    # Imported here: the command line loads this module before Lightning (see ``diffusion_lab.train``).
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    stored = output_dir / STORED
    if not stored.exists():
        stored.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, stored)
        if not (output_dir / HYDRA_RECORD).exists():
            OmegaConf.save(OmegaConf.create(_given_choices()), output_dir / CHOICES)
    if resume_overrides is None:
        if not (stored.parent / PROVENANCE).exists():
            OmegaConf.save(OmegaConf.create(run_provenance()), stored.parent / PROVENANCE)
        return
    n = 1
    while (output_dir / ".hydra" / f"resume_{n}").exists():
        n += 1
    record = output_dir / ".hydra" / f"resume_{n}"
    record.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(resume_overrides), record / "overrides.yaml")
    OmegaConf.save(cfg, record / "config.yaml")
    OmegaConf.save(OmegaConf.create(run_provenance()), record / PROVENANCE)


def resume_argv(argv: list[str]) -> list[str]:
    """Command-line arguments that run a resume in its own run directory: with ``ckpt_path=last`` and
    ``resume_dir=RUN`` (or ``hydra.run.dir=RUN``), one run (not ``-m``), Hydra's run directory is RUN and Hydra
    writes no ``.hydra`` files (RUN's record stays; ``record_run`` records the resume beside it)."""
    args = argv[1:]
    resume_dir = next((a.split("=", 1)[1] for a in args if a.startswith("resume_dir=")), None)
    own_dir = any(a.startswith("hydra.run.dir=") for a in args)
    if (
        not (resume_dir or own_dir)
        or "ckpt_path=last" not in args
        or any(a in ("-m", "--multirun") for a in args)
    ):
        return argv
    run_dir = [] if own_dir else [f"hydra.run.dir={resume_dir}"]
    no_record = [] if "hydra.output_subdir=null" in args else ["hydra.output_subdir=null"]
    return [*argv, *run_dir, *no_record]


def checkpoints_in(run: Path) -> list[str]:
    """The names of the checkpoints a run left in ``run/checkpoints`` (where every run writes them), sorted; none
    for a folder no run has trained in (or one that failed before its first step)."""
    folder = Path(run) / "checkpoints"
    return sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []


def check_new_run_dir(run: Path, ckpt_path: object) -> None:
    """Refuse to start a run in ``run`` when a run already trained there, unless it continues that run
    (``ckpt_path=last``)."""
    found = checkpoints_in(run)
    if ckpt_path == "last" or not found:
        return
    shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    raise UserError(
        f"the run directory {run} already holds a run (checkpoints/{shown}); continue it with ckpt_path=last "
        f"resume_dir={run}, or start the new run in another directory (hydra.run.dir)"
    )


class ExistingRunCheck(Callback):
    """A Hydra callback of training (conf/hydra/default.yaml): ``check_new_run_dir`` before Hydra writes the
    run's ``.hydra`` files, which would replace those of the run already in the folder, and the run lock: a
    training still in the folder (before its first checkpoint too) would otherwise be refused only after its
    record had been replaced by the refused run's config. One line, exit 2."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        run = Path(str(config.hydra.run.dir))
        try:
            check_not_in_use(run)
            check_new_run_dir(run, config.get("ckpt_path"))
        except UserError as err:
            refuse(str(err))
