"""Keep a sweep's raw text files (and the settings its report was made with) so the report can be rebuilt
from them alone: configs, overrides, logged metrics, evaluation results, launcher status and the final sample
grid of each job, a search's best trial; no checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import UserError
from .runs import SETTINGS_FILE, STATUS_FILE, job_folders, outside_the_sweep
from .search import SEARCH_FILE

__all__ = [
    "SETTINGS_FILE",
    "RAW_PATTERNS",
    "keep_raw",
    "gather_raw",
    "gathered_names",
    "write_settings",
    "read_settings",
]

# Below a job folder (or the sweep folder, for the status file): what the report reads.
RAW_PATTERNS = (
    ".hydra/config.yaml",
    ".hydra/overrides.yaml",
    ".hydra/provenance.yaml",
    "csv/**/metrics.csv",
    "tensorboard/**/events.out.tfevents.*",
    "evaluation/*/evaluation.json",
    "evaluation/*/evaluation.csv",
    "samples/final.png",
    "run_status.json",
)


def keep_raw(root: Path, dest: Path, settings: dict[str, Any]) -> list[Path]:
    """Copy the raw files under ``root`` into ``dest`` (same layout) and write the report's ``settings``
    (title, baseline, eval_baseline, the sweep's path) beside them; returns the files written."""
    return [*copy_raw(root, dest), write_settings(dest, settings)]


def gather_raw(roots: list[Path], dest: Path) -> list[Path]:
    """Copy the raw files of several sweeps into ``dest/<each sweep folder's name>`` (a kept raw folder by its
    study folder's name; numbered ``1_name``, ... where two names are alike), so that one report reads them
    all; the settings are written after, once the gathered jobs have been reported. Returns the files written."""
    return [p for root, name in zip(roots, gathered_names(roots)) for p in copy_raw(root, dest / name, dest)]


def gathered_names(roots: list[Path]) -> list[str]:
    """Each sweep's folder below a gathered copy: its folder's name (a kept raw copy's: its study's), all
    numbered ``1_name``, ``2_name``, ... where two are alike."""
    names = [_name(root.resolve()) for root in roots]
    if len(set(names)) < len(names):
        names = [f"{i}_{name}" for i, name in enumerate(names, 1)]
    return names


def _name(root: Path) -> str:
    """A sweep's folder name, or for a kept raw copy named ``raw`` (``<study>/raw``) its study's: a kept copy
    under any other name (``--keep-raw seeds_1-3``) already says what it holds."""
    kept_as_raw = root.name == "raw" and (root / SETTINGS_FILE).is_file() and root.parent.name
    return root.parent.name if kept_as_raw else root.name


def copy_raw(root: Path, dest: Path, report_root: Path | None = None) -> list[Path]:
    """Copy the raw files under ``root`` into ``dest`` (same layout); returns the files written. ``root`` may
    be neither ``report_root`` (default ``dest``, the folder the report will read) nor above it."""
    root, dest = root.resolve(), dest.resolve()
    report_root = (report_root or dest).resolve()
    if report_root == root or root.is_relative_to(report_root):
        raise UserError(
            f"--keep-raw {report_root}: pass a folder other than the sweep folder {root} and not above it"
        )
    sources = [
        p
        for name in (STATUS_FILE, SEARCH_FILE)
        for p in root.rglob(name)
        if not p.is_relative_to(report_root) and not outside_the_sweep(p, root)
    ]
    for job_dir in sorted(job_folders(root)):
        if not job_dir.is_relative_to(report_root):  # a gathered copy below the sweep is not more jobs
            sources += [p for pattern in RAW_PATTERNS for p in sorted(job_dir.glob(pattern)) if p.is_file()]
    written = []
    for src in sorted(set(sources)):
        target = dest / src.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        written.append(target)
    return written


def write_settings(dest: Path, settings: dict[str, Any]) -> Path:
    """The report's settings beside its kept raw files, so a rebuild uses the same title and baselines."""
    settings_file = dest / SETTINGS_FILE
    settings_file.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
    return settings_file


def read_settings(root: Path) -> dict[str, Any]:
    """The settings a kept raw folder was reported with ({} for a sweep folder)."""
    path = root / SETTINGS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}); fix or delete it") from e
