"""The report's tables as one model (a title, a header, rows of entries) that every output format renders."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .cells import Cell
from .runs import Job
from .stats import CONFIDENCE, Interval, paired_difference, t_interval, verdict

__all__ = ["Entry", "Table", "COLUMNS", "job_table", "eval_table", "seed_table", "baseline_table"]


@dataclass(frozen=True)
class Entry:
    text: str
    best: bool = False  # the best value of its column


@dataclass
class Table:
    title: str | None
    header: list[str]
    rows: list[list[Entry]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# (key, header, better: "min" | "max" | None, format)
COLUMNS: list[tuple[str, str, str | None, str]] = [
    ("fid", "FID", "min", "{:.4g}"),
    ("is", "IS", "max", "{:.4g}"),
    ("bpd", "bits/dim", "min", "{:.4g}"),
    ("val_bpd", "val bits/dim (one-t MC est.)", "min", "{:.4g}"),
    ("val_loss", "val loss", "min", "{:.4g}"),
    ("img_per_s", "train img/s", "max", "{:.0f}"),
    ("steps", "last logged step", None, "{:.0f}"),
    ("wall_time", "wall time (s)", None, "{:.0f}"),
]
# The quality metrics compared over seeds: lower is better for losses, FID, KID and bits/dim, higher for IS,
# precision and recall.
METRICS: list[tuple[str, str, str]] = [
    ("fid", "FID", "min"),
    ("is", "IS", "max"),
    ("kid", "KID", "min"),
    ("precision", "precision", "max"),
    ("recall", "recall", "max"),
    ("bpd", "bits/dim", "min"),
    ("val_bpd", "val bits/dim (one-t MC est.)", "min"),
    ("val_loss", "val loss", "min"),
]


def _best_values(jobs: list[Job], cols) -> dict[str, float]:
    best: dict[str, float] = {}
    for key, _, better, _ in cols:
        vals = [v for j in jobs if (v := j.value(key)) is not None]
        if better and len(vals) > 1 and len(set(vals)) > 1:
            best[key] = min(vals) if better == "min" else max(vals)
    return best


def job_table(jobs: list[Job], title: str | None = None, ranked: bool = True) -> Table:
    """One row per job; when ``ranked``, the best value of each column is marked."""
    cols = [c for c in COLUMNS if any(j.value(c[0]) is not None for j in jobs)]
    show_fid_at = any(j.fid_at() for j in jobs)
    header = ["#", "job", "status", *[c[1] for c in cols]]
    if show_fid_at:
        header.insert(3 + [c[0] for c in cols].index("fid") + 1, "FID at")
    best = _best_values(jobs, cols) if ranked else {}
    table = Table(title, header)
    for i, job in enumerate(jobs, 1):
        row = [Entry(str(i)), Entry(job.label), Entry("incomplete" if job.incomplete else job.status)]
        for key, _, _, fmt in cols:
            v = job.value(key)
            row.append(Entry("" if v is None else fmt.format(v), v is not None and best.get(key) == v))
            if key == "fid" and show_fid_at:
                row.append(Entry(job.fid_at()))
        table.rows.append(row)
    return table


def eval_table(jobs: list[Job]) -> Table:
    keys = ["sampler", "eta", "steps", "guidance", "fid", "is_mean", "kid_mean", "precision", "recall", "bpd"]
    present = [k for k in keys if any(k in r for j in jobs for e in j.evaluations for r in e["rows"])]
    table = Table("Evaluations", ["job", "evaluation", *present])
    for j in jobs:
        for e in j.evaluations:
            for r in e["rows"]:
                cells = [j.label, e["name"]]
                for k in present:
                    v = r.get(k)
                    cells.append(f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v)))
                table.rows.append([Entry(c) for c in cells])
    return table


def _metrics(cells: list[Cell]) -> list[tuple[str, str, str]]:
    return [m for m in METRICS if any(c.values(m[0]) for c in cells)]


def _mean_ci(interval: Interval) -> str:
    if interval.n == 0:
        return ""
    if math.isnan(interval.half_width):
        return f"{interval.mean:.4g}"
    return f"{interval.mean:.4g} ± {interval.half_width:.2g}"


def seed_table(cells: list[Cell]) -> Table:
    """Each cell's mean ± the half-width of the t-interval over its seeds."""
    metrics = _metrics(cells)
    pct = f"{CONFIDENCE:.0%}"
    table = Table("Over seeds", ["cell", "n", *[m[1] for m in metrics]])
    table.notes.append(
        f"mean ± half-width of the {pct} Student-t confidence interval over seeds "
        f"(t({(1 + CONFIDENCE) / 2:g}, n − 1) · s / √n); n: seeds (complete jobs) of the cell."
    )
    for cell in cells:
        row = [Entry(cell.label), Entry(str(len(cell.jobs)))]
        row += [Entry(_mean_ci(t_interval(cell.values(key)))) for key, _, _ in metrics]
        table.rows.append(row)
    return table


def _difference(diff: Interval, better: str) -> str:
    if diff.n == 0:
        return ""
    if math.isnan(diff.half_width):
        return f"{diff.mean:+.4g} (n=1: not separated)"
    return f"{diff.mean:+.4g} ± {diff.half_width:.2g} (n={diff.n}, {verdict(diff, better)})"


def baseline_table(cells: list[Cell], baseline: Cell) -> Table:
    """Each other cell minus the baseline, paired by seed, with the t-interval of the difference."""
    metrics = _metrics(cells)
    table = Table(f"Difference from {baseline.label}", ["cell", *[m[1] for m in metrics]])
    table.notes.append(
        f"cell − baseline, paired by seed: mean ± half-width of the {CONFIDENCE:.0%} Student-t interval of "
        "the per-seed differences, n pairs. 'better' / 'worse' only where the interval excludes 0 (lower is "
        "better for losses, FID, KID and bits/dim; higher for IS, precision and recall), else 'not separated'."
    )
    for cell in cells:
        if cell is baseline:
            continue
        row = [Entry(cell.label)]
        for key, _, better in metrics:
            row.append(
                Entry(_difference(paired_difference(cell.by_seed(key), baseline.by_seed(key)), better))
            )
        table.rows.append(row)
    return table
