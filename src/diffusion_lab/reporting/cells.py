"""Cells of a sweep: the jobs that differ only in their seed, and the baseline cell others are compared with."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from .runs import Job

__all__ = ["Cell", "group_cells", "find_baseline"]


@dataclass
class Cell:
    overrides: tuple[str, ...]
    jobs: list[Job] = field(default_factory=list)
    label: str = ""

    def by_seed(self, key: str) -> dict[int, float]:
        """The metric ``key`` of each seeded job (seed -> value)."""
        return {j.seed: v for j in self.jobs if j.seed is not None and (v := j.value(key)) is not None}

    def values(self, key: str) -> list[float]:
        return [v for j in self.jobs if (v := j.value(key)) is not None]


def group_cells(jobs: list[Job], with_incomplete: bool = False) -> list[Cell]:
    """The complete jobs grouped by their overrides without the seed, in the jobs' order (failed jobs are in no
    cell). ``with_incomplete`` adds the jobs a time guard stopped before their steps: their curves are still
    equal-budget comparisons up to the step they reached, though their final values are not."""
    cells: dict[tuple[str, ...], Cell] = {}
    for job in jobs:
        if not job.failed and (with_incomplete or not job.incomplete):
            cells.setdefault(job.cell, Cell(job.cell)).jobs.append(job)
    found = list(cells.values())
    # Labelled by what differs across every job of the sweep, so a cell keeps its label when others are
    # left out (incomplete, failed).
    common = [o for o in (jobs[0].cell if jobs else ()) if all(o in j.cell for j in jobs)]
    alone = "all jobs" if len(found) == 1 else "the common overrides alone"  # a reference cell beside others
    for cell in found:
        cell.label = " ".join(o for o in cell.overrides if o not in common) or alone
    return found


def find_baseline(cells: list[Cell], spec: str) -> Cell:
    """The one cell whose overrides include every override of ``spec`` ('schedule=linear', or several
    space-separated)."""
    wanted = spec.split()
    matches = [c for c in cells if wanted and all(o in c.overrides for o in wanted)]
    if len(matches) != 1:
        choices = "; ".join(c.label for c in cells) or "none"
        found = "no cell" if not matches else f"{len(matches)} cells"
        raise UserError(
            f"--baseline {spec!r} matches {found} of the sweep's complete jobs; name overrides that pick "
            f"exactly one of: {choices}"
        )
    return matches[0]
