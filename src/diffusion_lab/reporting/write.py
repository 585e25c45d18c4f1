"""Put a sweep's report together: read the jobs, split complete / incomplete / failed, build the tables and
figures, render Markdown and HTML."""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..io import atomic_path
from .cells import Cell, find_baseline, group_cells
from .plots import PLOTS_DIR, make_plots
from .raw import keep_raw, read_settings
from .render import Figure, Report, render
from .runs import Job, find_jobs, label_jobs
from .tables import Table, baseline_table, eval_table, job_table, seed_table

__all__ = ["write_report"]

INCOMPLETE = (
    "Incomplete jobs: stopped (trainer.max_time) before trainer.max_steps; not ranked and left out of the "
    "means over seeds"
)


def _sort(jobs: list[Job]) -> tuple[list[Job], str]:
    key = "fid" if any(j.value("fid") is not None for j in jobs) else "val_loss"

    def order(j: Job) -> tuple:
        v = j.value(key)
        number = j.num if j.num is not None else math.inf
        return (j.failed, v is None, v or 0.0, number, j.label)

    return sorted(jobs, key=order), key


def _intro(sweep: str, jobs: list[Job], sort_key: str, common: list[str]) -> list[str]:
    n_failed = sum(j.status not in ("COMPLETED", "unknown") for j in jobs)
    n_incomplete = sum(j.incomplete for j in jobs)
    counts = "".join(
        [
            f", {n_failed} not completed" if n_failed else "",
            f", {n_incomplete} incomplete" if n_incomplete else "",
        ]
    )
    sorted_by = "FID (lower is better)" if sort_key == "fid" else "validation loss (lower is better)"
    intro = [
        f"Sweep: `{sweep}` — {len(jobs)} job(s){counts}",
        f"Sorted by {sorted_by}; ★ marks the best value of a column.",
        "FID / IS: the best row of the job's `evaluate` runs when there are any, else the last value logged in "
        "training; bits/dim: the full bound from `evaluate`; val bits/dim (one-t MC est.): validation's "
        "one-timestep Monte-Carlo estimate of the unclipped bound (noisy; not the full bound).",
    ]
    if common:
        intro.append("Common overrides: " + " ".join(f"`{o}`" for o in common))
    return intro


def _tables(jobs: list[Job], cells: list[Cell], baseline: str | None) -> list[Table]:
    ranked = [j for j in jobs if not j.incomplete]
    incomplete = [j for j in jobs if j.incomplete]
    tables = [job_table(ranked)] if ranked else []
    if incomplete:
        tables.append(job_table(incomplete, INCOMPLETE, ranked=False))
    if any(len(c.jobs) > 1 for c in cells) or baseline:
        tables.append(seed_table(cells))
    if baseline:
        tables.append(baseline_table(cells, find_baseline(cells, baseline)))
    evaluations = eval_table(jobs)
    if evaluations.rows:
        tables.append(evaluations)
    return tables


def _samples(jobs: list[Job], out: Path) -> list[Figure]:
    found = [(j, j.dir / "samples" / "final.png") for j in jobs]
    return [Figure(j.label, p, os.path.relpath(p, out)) for j, p in found if p.is_file()]


def write_report(
    root: str | Path,
    out_dir: str | Path | None = None,
    title: str | None = None,
    baseline: str | None = None,
    raw_dest: str | Path | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the figures for the sweep under ``root`` into ``out_dir``
    (default ``root``); with ``raw_dest``, first keep the sweep's raw files there and report from that copy.
    Returns the paths written."""
    root = Path(root)
    settings = read_settings(root)
    title = title or settings.get("title") or f"Sweep report: {root.resolve().name}"
    baseline = baseline or settings.get("baseline")
    sweep = settings.get("sweep") or str(root.resolve())
    out = Path(out_dir) if out_dir else root
    if raw_dest is not None:
        find_jobs(root)  # a one-line error for a folder without jobs, before anything is copied
        keep_raw(root, Path(raw_dest), {"title": title, "baseline": baseline, "sweep": sweep})
        root = Path(raw_dest)
    jobs = find_jobs(root)
    common = label_jobs(jobs, root)
    jobs, sort_key = _sort(jobs)
    cells = group_cells(jobs)
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots([j for j in jobs if not j.incomplete], cells, out / PLOTS_DIR)
    report = Report(
        title=title,
        intro=_intro(sweep, jobs, sort_key, common),
        tables=_tables(jobs, cells, baseline),
        figures=[Figure(name, path, f"{PLOTS_DIR}/{path.name}") for name, path in plots.items()],
        samples=_samples(jobs, out),
        failed=[f"{j.label}: exit {j.exit_code}, log `{j.log}`" for j in jobs if j.failed],
        notes=[f"{j.label}: {note}" for j in jobs for note in j.notes],
    )
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    for fmt, key in (("md", "markdown"), ("html", "html")):
        with atomic_path(paths[key]) as tmp:
            tmp.write_text(render(report, fmt))
    return {**paths, **plots}
