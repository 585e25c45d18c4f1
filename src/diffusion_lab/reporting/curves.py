"""Comparisons over training at equal steps: a curve metric (in-training FD, validation loss) of each cell
against the baseline's, paired by seed, at every step all their jobs logged it.

"Converges faster" is a claim about these curves, so it is judged step by step with the same paired
t-interval as the final values, not from two end points. Jobs a time guard stopped early count at the steps
they reached: at step s every job has trained exactly s steps.
"""

from __future__ import annotations

from .cells import Cell
from .scores import FRECHET
from .stats import CONFIDENCE, paired_difference
from .tables import BETTER_NOTE, Entry, Table, difference_text

__all__ = ["CURVE_KEYS", "common_steps", "curve_tables"]

# The curves compared step by step: in-training sample quality (lower is better).
CURVE_KEYS = [f"metrics/{s.key}" for s in FRECHET]


def common_steps(cells: list[Cell], key: str) -> list[int]:
    """The steps at which every job of every cell logged ``key``: curves are compared at equal budgets."""
    step_sets = [{s for s, _ in j.series.get(key, [])} for c in cells for j in c.jobs]
    return sorted(set.intersection(*step_sets)) if step_sets else []


def _at(cell: Cell, key: str, step: int) -> dict[int, float]:
    """seed -> the value of ``key`` at ``step``."""
    return {j.seed: dict(j.series[key])[step] for j in cell.jobs if j.seed is not None}


def curve_table(cells: list[Cell], baseline: Cell, key: str) -> Table | None:
    steps = common_steps(cells, key)
    others = [c for c in cells if c is not baseline]
    if not steps or not others:
        return None
    table = Table(
        f"{key} over training: difference from {baseline.label}", ["step", *[c.label for c in others]]
    )
    table.notes.append(
        f"cell − baseline at each training step every job reached, paired by seed: mean ± half-width of the "
        f"{CONFIDENCE:.0%} Student-t interval, n pairs (jobs stopped early by a time guard included up to the "
        "step they reached). " + BETTER_NOTE
    )
    for step in steps:
        base = _at(baseline, key, step)
        diffs = [paired_difference(_at(c, key, step), base) for c in others]
        table.rows.append([Entry(str(step)), *[Entry(difference_text(d, "min")) for d in diffs]])
    return table


def curve_tables(cells: list[Cell], baseline: Cell) -> list[Table]:
    """One step-by-step difference table per curve metric the cells logged."""
    found = [curve_table(cells, baseline, key) for key in CURVE_KEYS]
    return [t for t in found if t is not None]
