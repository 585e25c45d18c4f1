"""The report's tables as one model (a title, a header, rows of entries) that every output format renders."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..overrides import override_key
from .cells import Cell
from .runs import Job
from .scores import FRECHET, SCORES
from .stats import (
    CONFIDENCE,
    MOST_SEEDS,
    Interval,
    paired_difference,
    projectable,
    seeds_to_separate,
    t_interval,
    verdict,
)

__all__ = [
    "Entry",
    "Table",
    "COLUMNS",
    "BETTER_NOTE",
    "job_table",
    "eval_table",
    "seed_table",
    "baseline_table",
    "mean_ci",
    "difference_text",
]


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


# (key, header, better: "min" | "max" | None, format); the Fréchet distances and IS-like scores of each
# feature network, each in its own column.
COLUMNS: list[tuple[str, str, str | None, str]] = [
    *[(s.key, s.header, s.better, "{:.4g}") for s in SCORES if s.frechet or s.better == "max" and s.kind],
    ("bpd", "bits/dim", "min", "{:.4g}"),
    ("val_bpd", "val bits/dim (one-t MC est.)", "min", "{:.4g}"),
    ("val_loss", "val loss", "min", "{:.4g}"),
    ("img_per_s", "train img/s (median)", "max", "{:.0f}"),
    ("steps", "last logged step", None, "{:.0f}"),
    ("wall_time", "wall time (s)", None, "{:.0f}"),
]
# The quality metrics compared over seeds: lower is better for losses, FD / FID, KD / KID and bits/dim, higher
# for IS, the classifier score, precision and recall.
METRICS: list[tuple[str, str, str]] = [
    *[(s.key, s.header, s.better) for s in SCORES],
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
    """One row per job; when ``ranked``, the best value of each column is marked. Each Fréchet distance is
    followed by where it comes from (an evaluation's sampler and steps, or training)."""
    cols = [c for c in COLUMNS if any(j.value(c[0]) is not None for j in jobs)]
    at = {f.key for f in FRECHET if any(j.score_at(f.key) for j in jobs)}
    header = ["#", "job", "status"]
    for key, name, _, _ in cols:
        header += [name, f"{name} at"] if key in at else [name]
    best = _best_values(jobs, cols) if ranked else {}
    table = Table(title, header)
    for i, job in enumerate(jobs, 1):
        row = [Entry(str(i)), Entry(job.label), Entry("incomplete" if job.incomplete else job.status)]
        for key, _, _, fmt in cols:
            v = job.value(key)
            row.append(Entry("" if v is None else fmt.format(v), v is not None and best.get(key) == v))
            if key in at:
                row.append(Entry(job.score_at(key)))
        table.rows.append(row)
    return table


def _cell_text(row: dict, key: str) -> str:
    v = row.get(key)
    spread = row.get(key[: -len("_mean")] + "_std" if key.endswith("_mean") else key + "_std")
    if isinstance(v, float) and isinstance(spread, float):
        return f"{v:.4g} ± {spread:.2g}"
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def eval_table(jobs: list[Job]) -> Table:
    """Every evaluation row of every job, its scores under their own names."""
    rows = [r for j in jobs for e in j.evaluations for r in e["rows"]]
    keys = ["sampler", "eta", "variance", "clip", "steps", "guidance", *[s.key for s in SCORES]]
    present = [k for k in [*keys, "bpd"] if any(k in r for r in rows)]
    headers = {s.key: s.header for s in SCORES}
    table = Table("Evaluations", ["job", "evaluation", *[headers.get(k, k) for k in present]])
    table.notes.append(
        "x ± s: KID / KD and IS / classifier score with their own std (over subsets / splits); FID / FD of "
        "several sample sets (evaluate's sample_sets) as their mean ± std over the sets."
    )
    for j in jobs:
        for e in j.evaluations:
            for r in e["rows"]:
                table.rows.append(
                    [Entry(j.label), Entry(e["name"]), *[Entry(_cell_text(r, k)) for k in present]]
                )
    return table


BETTER_NOTE = (
    "'better' / 'worse' only where the interval excludes 0 (lower is better for losses, FID / FD, KID / KD and "
    "bits/dim; higher for IS, the classifier score, precision and recall), else 'not separated', with the seeds "
    "that would separate it if its mean and spread held ('n≥k at this spread': a figure for planning more seeds, "
    f"not a promise; 'over {MOST_SEEDS} seeds' past that)."
)


def _metrics(cells: list[Cell]) -> list[tuple[str, str, str]]:
    return [m for m in METRICS if any(c.values(m[0]) for c in cells)]


def mean_ci(interval: Interval) -> str:
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
        row += [Entry(mean_ci(t_interval(cell.values(key)))) for key, _, _ in metrics]
        table.rows.append(row)
    return table


def difference_text(diff: Interval, better: str) -> str:
    if diff.n == 0:
        return ""
    if math.isnan(diff.half_width):
        return f"{diff.mean:+.4g} (n=1: not separated)"
    said = verdict(diff, better)
    return f"{diff.mean:+.4g} ± {diff.half_width:.2g} (n={diff.n}, {said}{_projection(diff, said)})"


def _projection(diff: Interval, said: str) -> str:
    """How many seeds would separate a difference that is not yet, if its mean and spread held."""
    if said != "not separated" or not projectable(diff):
        return ""
    m = seeds_to_separate(diff)
    return f"; n≥{m} at this spread" if m else f"; over {MOST_SEEDS} seeds at this spread"


# The groups whose choice changes what the training loss measures (its target, weighting, noise levels or
# corruption, the space it is taken in, the task): the loss of a flow and that of an ε-network, of one schedule
# and another, or of a model on latents and one on pixels, are different quantities, and their difference says
# nothing about which model is better. An experiment preset may set any of them.
LOSS_DEFINING = (
    "experiment",
    "task",
    "autoencoder",
    "process",
    "loss",
    "weighting",
    "prediction",
    "schedule",
    "timesteps",
    "degradation",
    "variance",
)
NOT_COMPARABLE = "not comparable (another loss)"


def _loss_definition(cell: Cell) -> set[str]:
    return {o for o in cell.overrides if override_key(o).split(".")[0] in LOSS_DEFINING}


def baseline_table(cells: list[Cell], baseline: Cell) -> Table:
    """Each other cell minus the baseline, paired by seed, with the t-interval of the difference; the
    validation loss only between cells whose loss is the same quantity."""
    metrics = _metrics(cells)
    table = Table(f"Difference from {baseline.label}", ["cell", *[m[1] for m in metrics]])
    table.notes.append(
        f"cell − baseline, paired by seed: mean ± half-width of the {CONFIDENCE:.0%} Student-t interval of "
        "the per-seed differences, n pairs. " + BETTER_NOTE
    )
    baseline_loss, any_other_loss = _loss_definition(baseline), False
    for cell in cells:
        if cell is baseline:
            continue
        other_loss = _loss_definition(cell) != baseline_loss
        any_other_loss |= other_loss
        row = [Entry(cell.label)]
        for key, _, better in metrics:
            if key == "val_loss" and other_loss:
                row.append(Entry(NOT_COMPARABLE))
                continue
            row.append(
                Entry(difference_text(paired_difference(cell.by_seed(key), baseline.by_seed(key)), better))
            )
        table.rows.append(row)
    if any_other_loss:
        table.notes.append(
            f"val loss: '{NOT_COMPARABLE}' where a cell differs from the baseline in a group that defines the "
            f"loss ({', '.join(LOSS_DEFINING)})."
        )
    return table
