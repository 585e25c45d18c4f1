"""Reading a sweep: every job folder, its overrides and config, its status, its logged metrics and evaluations.

A job folder is one with ``.hydra/overrides.yaml`` (or one a launcher's ``sweep_status.json`` lists). Metrics
come from whichever logger the job used: the CSV logger's ``metrics.csv``, else TensorBoard event files. A W&B
offline run keeps its metrics in a binary log this report does not read; such a job gets a note saying so.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..overrides import override_key, split_override
from ..run_status import FINAL_STATES, read_run_status
from ..score_names import features_kind
from ..spec_keys import SPEC_KEYS
from .scores import FRECHET, SCORES, score
from .setting import Setting, num

__all__ = [
    "Job",
    "find_jobs",
    "job_folders",
    "label_jobs",
    "num",
    "outside_the_sweep",
    "stopped_early",
    "STATUS_FILE",
]

STATUS_FILE = "sweep_status.json"
SETTINGS_FILE = "report_settings.json"  # marks a kept copy of a sweep's raw files (reporting.raw)
WHAT_IT_NEEDS = (
    "a multirun folder (e.g. outputs/<task>/multirun/<time>, from `python -m diffusion_lab.train -m ...`) "
    "holding one folder per job with .hydra/overrides.yaml and csv/metrics.csv"
)
FAILED = ("FAILED", "INTERRUPTED")


@dataclass
class Job:
    dir: Path
    overrides: list[str] = field(default_factory=list)
    status: str = "unknown"
    exit_code: int | None = None
    wall_time_s: float | None = None
    log: str | None = None
    num: int | None = None
    config: dict[str, Any] = field(default_factory=dict)  # seed and trainer limits from .hydra/config.yaml
    code: str | None = None  # the code digest of .hydra/provenance.yaml (None: made before runs recorded it)
    device: str | None = None  # the GPU model (or 'cpu') of .hydra/provenance.yaml (None: not recorded)
    last: dict[str, float] = field(default_factory=dict)  # last logged value of each metric
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # (step, value) of each metric
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # {"name", "summary", "rows"}
    notes: list[str] = field(default_factory=list)
    label: str = ""
    # the evaluation settings every evaluated job of the sweep has (setting_key); set by find_jobs
    shared_settings: frozenset = frozenset()
    record: dict[str, Any] = field(default_factory=dict)  # its launcher's record (sweep_status.json), if any
    run_status: dict[str, Any] = field(default_factory=dict)  # its own record (run_status.json), if any

    # ---- what the job is
    @property
    def seed(self) -> int | None:
        for o in self.overrides:
            key, value = split_override(o)
            if key == "seed":
                return _int(value or "")
        seed = self.config.get("seed")
        return int(seed) if isinstance(seed, int) else None

    @property
    def cell(self) -> tuple[str, ...]:
        """The job's overrides without its seed: the jobs of one cell differ only in their seed."""
        return tuple(o for o in self.overrides if override_key(o) != "seed" and not _is_hydra(o))

    @property
    def last_step(self) -> int | None:
        steps = [s for points in self.series.values() for s, _ in points]
        return max(steps) if steps else None

    @property
    def failed(self) -> bool:
        return self.status in FAILED

    @property
    def incomplete(self) -> bool:
        """Stopped (by trainer.max_time) before trainer.max_steps: the last step it was due to log (steps are
        logged 0-based every trainer.log_every_n_steps) was never logged."""
        max_steps = self.config.get("max_steps")
        if self.failed or not isinstance(max_steps, int) or max_steps <= 0:
            return False
        every = self.config.get("log_every_n_steps")
        every = every if isinstance(every, int) and every > 0 else 1
        due = max_steps - max_steps % every  # the count of steps trained when the last due log is written
        if due == 0:  # a run shorter than its logging interval logs nothing: nothing to tell by
            return False
        return self.last_step is None or self.last_step + 1 < due

    # ---- the table's values
    def best_eval_row(self, frechet: str) -> dict[str, Any] | None:
        """The evaluation row with the lowest Fréchet distance ``frechet`` (``fid`` or ``fd_classifier``) among
        the settings every evaluated job of the sweep shares (else among all of the job's), at the largest sample
        count among them: a setting only some jobs were scored in, or a smaller sample set (FD is biased upward
        as n shrinks), would make the jobs' headline scores incomparable."""
        rows = [
            (e["name"], r) for e in self.evaluations for r in e["rows"] if num(r.get(frechet)) is not None
        ]
        rows = [nr for nr in rows if setting_key(nr[1]) in self.shared_settings] or rows
        if not rows:
            return None
        largest = max(num(r.get("n")) or 0 for _, r in rows)
        rows = [nr for nr in rows if (num(nr[1].get("n")) or 0) == largest]
        name, row = min(rows, key=lambda nr: nr[1][frechet])
        return {**row, "_eval": name}

    def _score(self, key: str) -> float | None:
        """A sample-quality score: from the best evaluation row of its feature network when there is one (for
        precision / recall, named alike on both, of the first network evaluated), else the last logged."""
        kind = score(key).kind
        for frechet in (f for f in FRECHET if kind in (None, f.kind)):
            if (row := self.best_eval_row(frechet.key)) is not None:
                return num(row.get(key))
        return self.last.get(f"metrics/{key}")

    def value(self, key: str) -> float | None:
        if any(s.key == key for s in SCORES):
            return self._score(key)
        if key == "bpd":
            values = [num(e["summary"].get("bpd")) for e in self.evaluations]
            values = [v for v in values if v is not None]
            return min(values) if values else None
        if key == "steps":
            return None if self.last_step is None else float(self.last_step)
        if key == "wall_time":
            return self.wall_time_s
        if key == "val_bpd":  # validation's one-timestep estimate (older metrics files: val/bpd_estimate)
            return self.last.get("val/bpd_one_t_mc", self.last.get("val/bpd_estimate"))
        if key == "img_per_s":  # the median window: the last is often alone on a GPU its sweep shared
            rates = [v for _, v in self.series.get("perf/train_img_per_s", [])]
            return statistics.median(rates) if rates else None
        return self.last.get({"val_loss": "val/loss"}[key])

    def score_at(self, frechet: str) -> str:
        """Where the Fréchet distance ``frechet`` shown for the job comes from."""
        row = self.best_eval_row(frechet)
        if row:
            return Setting.of(row).label
        points = self.series.get(f"metrics/{frechet}")
        return f"training, step {points[-1][0]}" if points else ""


def setting_key(row: dict[str, Any]) -> tuple:
    """What an evaluation row was scored with: its Setting and the features it was scored on."""
    return Setting.of(row), str(row.get("features"))


def share_settings(jobs: list[Job]) -> None:
    """Give each job the evaluation settings that every job with evaluations has (``Job.best_eval_row``)."""
    keys = [{setting_key(r) for e in job.evaluations for r in e["rows"]} for job in jobs]
    keys = [k for k in keys if k]  # a job whose evaluations scored nothing yet does not narrow the others
    shared = frozenset(set.intersection(*keys)) if keys else frozenset()
    for job in jobs:
        job.shared_settings = shared


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _is_hydra(override: str) -> bool:
    return override_key(override).startswith("hydra.")


# ------------------------------------------------------------------------------------------------- files
def _read_overrides(path: Path) -> list[str]:
    from omegaconf import OmegaConf

    try:
        return [str(o) for o in OmegaConf.to_container(OmegaConf.load(path))]  # type: ignore[union-attr]
    except Exception:
        return []


def _read_config(path: Path) -> dict[str, Any]:
    """The seed, the trainer's step limits, the batch size and the component classes of the job's composed config
    (unresolvable ones left out)."""
    from omegaconf import OmegaConf

    if not path.is_file():
        return {}
    try:
        cfg = OmegaConf.load(path)
    except Exception:
        return {}
    wanted = {
        "seed": "seed",
        "max_steps": "trainer.max_steps",
        "log_every_n_steps": "trainer.log_every_n_steps",
        "batch_size": "data.batch_size",
    }
    found: dict[str, Any] = {}
    features = _select(cfg, "callbacks.sample_quality.features")
    if isinstance(features, str):
        found["quality_features"] = features
    for name, key in wanted.items():
        if isinstance(value := _select(cfg, key), int):
            found[name] = value
    found["components"] = _components(cfg)
    return found


def _components(cfg) -> dict[str, str]:
    """Each spec group's class in the job's composed config (the last part of its ``_target_``): a group an
    experiment preset sets (experiment=fmnist's cosine schedule) shows in no override."""
    found = {}
    for group in SPEC_KEYS:
        target = _select(cfg, f"{group}._target_")
        if isinstance(target, str):
            found[group] = target.rsplit(".", 1)[-1]
    return found


def _read_provenance(path: Path, keys: tuple[str, ...]) -> dict[str, str | None]:
    """Entries of a run's provenance (``code_sha256``, ``device``), each None where absent; all None where the
    file is missing or unreadable."""
    from omegaconf import OmegaConf

    try:
        record = OmegaConf.load(path) if path.is_file() else {}
    except Exception:
        record = {}
    return {key: str(value) if (value := record.get(key)) else None for key in keys}


def _select(cfg, key: str) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(cfg, key, default=None)
    except Exception:  # an interpolation that does not resolve outside the run
        return None


def _note_old_fid(job: Job) -> None:
    """Metrics files from before the callback named its scores by feature network hold ``metrics/fid`` even
    on a classifier's features: shown as logged, with a note saying what it is."""
    features = job.config.get("quality_features")
    if features and features_kind(features) == "classifier" and "metrics/fid" in job.last:
        job.notes.append(
            f"`metrics/fid` was logged on classifier features (`{features}`) by an older version: it is a "
            "Fréchet distance on those features (FD), not an Inception FID, and is shown as logged"
        )


def _add(job: Job, key: str, step: int | None, value: float) -> None:
    job.last[key] = value
    if step is not None:
        job.series.setdefault(key, []).append((step, value))


def _read_csv(job: Job) -> bool:
    paths = sorted(job.dir.glob("csv/**/metrics.csv"))
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                step = num(row.get("step"))
                for key, raw in row.items():
                    value = num(raw)
                    if key not in (None, "step") and value is not None:
                        _add(job, key, None if step is None else int(step), value)
    return bool(paths)


def _read_tensorboard(job: Job) -> bool:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_dirs = sorted({p.parent for p in job.dir.glob("tensorboard/**/events.out.tfevents.*")})
    for event_dir in event_dirs:
        events = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
        events.Reload()
        for key in sorted(events.Tags()["scalars"]):
            if key == "hp_metric":  # Lightning's placeholder (-1) for a hyperparameter metric
                continue
            for e in sorted(events.Scalars(key), key=lambda e: (e.step, e.wall_time)):
                if (value := num(e.value)) is not None:
                    _add(job, key, int(e.step), value)
    return bool(event_dirs)


def _note_wandb(job: Job) -> None:
    for run in sorted(job.dir.glob("wandb/offline-run-*")):
        job.notes.append(
            f"W&B offline run `{run.name}`: its metrics are in W&B's binary log, which this report does not "
            "read (add logger=csv or logger=tensorboard, or `wandb sync` it)"
        )


def _read_metrics(job: Job) -> None:
    if not _read_csv(job) and not _read_tensorboard(job):
        _note_wandb(job)


def _read_evaluations(job: Job) -> None:
    for path in sorted(job.dir.glob("evaluation/*/evaluation.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        summary, rows = data.get("summary") or {}, data.get("rows") or []
        job.evaluations.append({"name": path.parent.name, "summary": summary, "rows": rows})
        if stopped_early(job.evaluations[-1]):
            job.notes.append(_partial_note(path.parent.name, len(rows), summary))


def stopped_early(evaluation: dict[str, Any]) -> bool:
    """Whether an evaluation (a ``Job.evaluations`` entry) stopped before its last setting: its table still says
    ``"complete": false``."""
    return evaluation["summary"].get("complete") is False


def _partial_note(name: str, scored: int, summary: dict[str, Any]) -> str:
    settings = summary.get("settings", "?")
    # evaluate computes bits/dim before it draws any samples: a stopped evaluation can hold a finished bound
    bpd = summary.get("bpd") is not None
    if scored == 0:
        kept = "nothing of it is"
        if bpd:
            kept = f"only its bits/dim (the full bound on {summary.get('bpd_n', '?')} images, computed before sampling) is"
        return (
            f"evaluation `{name}` scored none of its {settings} {'sample ' if bpd else ''}settings: it stopped before "
            f"the first (interrupted or failed) or is still running; {kept} in the tables"
        )
    return (
        f"evaluation `{name}` is partial: {scored} of {settings} settings were scored before it stopped; its rows "
        f"are in the tables, the rest are missing{' (its bits/dim is complete)' if bpd else ''}"
    )


def _status_records(root: Path) -> dict[Path, dict[str, Any]]:
    """Job records of every sweep_status.json under ``root`` (the gpu_pool launcher's), by job folder."""
    records: dict[Path, dict[str, Any]] = {}
    for status_file in sorted(p for p in root.rglob(STATUS_FILE) if not outside_the_sweep(p, root)):
        try:
            status = json.loads(status_file.read_text())
        except (OSError, ValueError):
            continue
        sweep = {k: v for k, v in status.items() if k != "jobs"}  # the launcher's settings
        for rec in status.get("jobs", []):
            rec = {**rec, "sweep": sweep}
            recorded = Path(rec.get("dir", ""))
            # The same place below this file first: a moved or copied sweep must not read the original.
            try:
                job_dir = status_file.parent / recorded.relative_to(status.get("sweep_dir", ""))
            except ValueError:
                job_dir = status_file.parent / recorded.name
            records[(job_dir if job_dir.is_dir() or not recorded.is_dir() else recorded).resolve()] = rec
    return records


def in_hidden_folder(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in a hidden folder below ``root`` (a study's ``.prewarm`` runs, which only fill the
    compile cache): not a job of the sweep. Hydra's ``.hydra`` folders hold each job's config and do not count."""
    rel = path.resolve().relative_to(root.resolve())
    return any(part.startswith(".") and part != ".hydra" for part in rel.parts)


def outside_the_sweep(path: Path, root: Path) -> bool:
    """Whether ``path`` is below ``root`` but not part of its sweep: in a kept raw copy or a hidden folder."""
    return _in_kept_copy(path, root) or in_hidden_folder(path, root)


def _in_kept_copy(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in a kept copy of raw files below ``root`` (read when it is the root itself)."""
    root = root.resolve()
    return any(
        (d / SETTINGS_FILE).is_file() for d in path.resolve().parents if d != root and d.is_relative_to(root)
    )


def _wall_time(rec: dict[str, Any]) -> float | None:
    """A job's wall time: its duration, plus those of its earlier attempts (a sweep continued)."""
    times = [num(a.get("duration_s")) for a in [*rec.get("attempts", []), rec]]
    known = [t for t in times if t is not None]
    return sum(known) if known else None


def _status(rec: dict[str, Any], run: dict[str, Any]) -> str:
    """How the job ended: FAILED where its launcher saw its process fail (whatever its training recorded
    before); else the run's own recorded end, the more precise (the launcher's COMPLETED only says exit 0: the
    run says COMPLETED or INCOMPLETE; a run started on its own has no launcher's record; a launcher killed while
    its jobs ran left them RUNNING or QUEUED in it); else the launcher's word."""
    if rec.get("status") != "FAILED" and run.get("status") in FINAL_STATES:
        return str(run["status"])
    return str(rec.get("status") or run.get("status") or "unknown")


def _read_job(job_dir: Path, rec: dict[str, Any]) -> Job:
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    job = Job(dir=job_dir)
    job.overrides = _read_overrides(overrides_file) if overrides_file.is_file() else []
    job.overrides = job.overrides or [str(o) for o in rec.get("overrides", [])]
    job.config = _read_config(job_dir / ".hydra" / "config.yaml")
    provenance = _read_provenance(job_dir / ".hydra" / "provenance.yaml", ("code_sha256", "device"))
    job.code, job.device = provenance["code_sha256"], provenance["device"]
    job.record, job.run_status = rec, read_run_status(job_dir)
    job.status = _status(rec, job.run_status)
    job.exit_code = rec.get("exit_code")
    job.wall_time_s = _wall_time(rec or job.run_status)
    job.log = rec.get("log")
    job.num = rec.get("num")
    if rec.get("attempts"):
        earlier = ", ".join(str(a.get("status")) for a in rec["attempts"])
        job.notes.append(
            f"ran in {len(rec['attempts']) + 1} attempts (its sweep was continued): {earlier}, then {job.status}; "
            "its wall time is their sum"
        )
    _read_metrics(job)
    _note_old_fid(job)
    _read_evaluations(job)
    return job


def job_folders(root: Path) -> set[Path]:
    """The job folders below ``root`` (each with ``.hydra/overrides.yaml``), resolved, leaving out those of a
    kept raw copy or a hidden folder below it."""
    found = (p.parent.parent.resolve() for p in root.rglob(".hydra/overrides.yaml"))
    return {d for d in found if not outside_the_sweep(d, root)}


def find_jobs(root: str | Path) -> list[Job]:
    """Every job under ``root``: folders with .hydra/overrides.yaml, and jobs a sweep_status.json lists."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} does not exist or is not a folder; pass {WHAT_IT_NEEDS}")
    records = _status_records(root)
    dirs = job_folders(root) | set(records)
    jobs = [_read_job(job_dir, records.get(job_dir, {})) for job_dir in sorted(dirs)]
    if not jobs:
        raise UserError(f"{root} holds no jobs; pass {WHAT_IT_NEEDS}")
    share_settings(jobs)
    label_jobs(jobs, root)
    return jobs


# ------------------------------------------------------------------------------------------------- labels
def label_jobs(jobs: list[Job], root: Path) -> list[str]:
    """Label each job by the overrides that differ between jobs; returns the overrides common to all."""
    # (One job: all its overrides are "common", and it is labelled by its folder.)
    common = [o for o in (jobs[0].overrides if jobs else []) if all(o in j.overrides for j in jobs)]
    for job in jobs:
        varying = [o for o in job.overrides if o not in common and not _is_hydra(o)]
        job.label = " ".join(varying) if varying else _folder_label(job, root)
    return common


def _folder_label(job: Job, root: Path) -> str:
    """The job folder relative to the report's root, its own name cut to the launcher's job number
    (`model/0_loss=simple,...` -> `model/#0`): the overrides are in the common-overrides line already."""
    rel = (
        job.dir.relative_to(root.resolve()) if job.dir.is_relative_to(root.resolve()) else Path(job.dir.name)
    )
    number, sep, _ = rel.name.partition("_")
    return str(rel.with_name(f"#{number}")) if sep and number.isdigit() else str(rel)
