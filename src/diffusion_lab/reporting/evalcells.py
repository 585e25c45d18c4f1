"""Evaluation rows over seeds: the rows of a cell's jobs (one model per seed) grouped by evaluation setting
(``setting.Setting``: sampler, eta, variance, clipping, steps, guidance, samples per set), the estimator's own
spread where a row scored several sample sets, and the ``--eval-baseline`` setting each other setting of a cell is
paired with."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from .cells import Cell
from .scores import SCORES
from .setting import FIELDS, Setting, num

__all__ = [
    "Setting",
    "EvalGroup",
    "group_evaluations",
    "sample_set_spread",
    "pair_with_baseline",
    "pair_with_baseline_cell",
]

SAME = ("steps", "guidance", "n")  # a setting's baseline is at the same of these, unless the spec names them


@dataclass
class EvalGroup:
    """The rows of one evaluation setting over a cell's seeds."""

    cell: Cell
    setting: Setting
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # seed -> row

    def by_seed(self, key: str) -> dict[int, float]:
        return {seed: v for seed, row in self.rows.items() if (v := num(row.get(key))) is not None}

    def values(self, key: str) -> list[float]:
        return list(self.by_seed(key).values())


def group_evaluations(cells: list[Cell]) -> tuple[list[EvalGroup], list[str]]:
    """The evaluation rows (with a sample-quality score; not a bits/dim-only row) of the cells' seeded jobs by
    (cell, setting), in cell order then setting order; and a note for each row left out (a second row of one
    setting in one job)."""
    groups: list[EvalGroup] = []
    notes = []
    for cell in cells:
        found: dict[Setting, EvalGroup] = {}
        for job in (j for j in cell.jobs if j.seed is not None):
            for evaluation in job.evaluations:
                for row in (
                    r for r in evaluation["rows"] if any(num(r.get(s.key)) is not None for s in SCORES)
                ):
                    group = found.setdefault(Setting.of(row), EvalGroup(cell, Setting.of(row)))
                    if job.seed in group.rows:
                        notes.append(
                            f"{job.label}: evaluation `{evaluation['name']}` repeats {group.setting.label} "
                            "(left out of the evaluations over seeds: the first row is used)"
                        )
                    else:
                        group.rows[job.seed] = row
        groups += sorted(found.values(), key=lambda g: g.setting.order())
    return groups, notes


def sample_set_spread(group: EvalGroup, key: str) -> tuple[float, int] | None:
    """The std of one sample set's ``key`` around its checkpoint's mean, pooled over the group's checkpoints
    (sqrt(sum (S_i - 1) s_i^2 / sum (S_i - 1)) over rows with S_i >= 2 sets in ``<key>_values``), and the
    smallest S_i; None when no row has two sets."""
    sets = [vs for row in group.rows.values() if len(vs := _set_values(row, key)) >= 2]
    if not sets:
        return None
    squares = sum(math.fsum((v - math.fsum(vs) / len(vs)) ** 2 for v in vs) for vs in sets)
    return math.sqrt(squares / sum(len(vs) - 1 for vs in sets)), min(len(vs) for vs in sets)


def _set_values(row: dict[str, Any], key: str) -> list[float]:
    values = row.get(f"{key}_values")
    if not isinstance(values, list):
        return []
    return [v for v in (num(x) for x in values) if v is not None]


# ------------------------------------------------------------------------------------------- --eval-baseline
def _parse(spec: str) -> dict[str, str]:
    wanted = {}
    for part in spec.split():
        key, sep, value = part.partition("=")
        if not sep or key not in FIELDS or not value:
            raise UserError(
                f"--eval-baseline {spec!r}: {part!r} is not FIELD=VALUE with FIELD one of {', '.join(FIELDS)} "
                "(space-separated, e.g. 'sampler=ddpm' or 'sampler=ddim eta=0')"
            )
        if key == "clip" and value.lower() not in ("true", "false"):
            raise UserError(f"--eval-baseline {spec!r}: clip={value} is not true or false")
        wanted[key] = value
    if not wanted:
        raise UserError("--eval-baseline is empty; pass FIELD=VALUE pairs, e.g. 'sampler=ddpm'")
    return wanted


# Fields whose value other than this default means evaluate sampled otherwise than the checkpoint's own way
# (sampling_variance, sampler.clip_denoised=false): such a setting is a baseline only where the spec names it.
NAMED_ONLY = {"variance": None, "clip": True}


def _matches(setting: Setting, wanted: dict[str, str]) -> bool:
    """Whether ``setting`` is what ``wanted`` names (a NAMED_ONLY field off its default only if named)."""
    if any(getattr(setting, k) != default and k not in wanted for k, default in NAMED_ONLY.items()):
        return False
    for key, value in wanted.items():
        have = getattr(setting, key)
        if key == "clip":
            if have != (value.lower() == "true"):
                return False
        elif key in ("sampler", "variance"):
            if have != value:
                return False
        elif have is None or num(value) != have:
            return False
    return True


def pair_with_baseline(groups: list[EvalGroup], spec: str) -> list[tuple[EvalGroup, EvalGroup]]:
    """(group, its baseline) for every group of a cell not matching ``spec``: the cell's one matching group
    at the same steps, guidance and samples per set, except those ``spec`` names ('sampler=ddpm': the DDPM
    row at the same steps; 'sampler=ddpm steps=1000': the 1000-step DDPM row for every setting). Groups with
    no such baseline are left out."""
    wanted = _parse(spec)
    baselines = [g for g in groups if _matches(g.setting, wanted)]
    if not baselines:
        settings = "; ".join(dict.fromkeys(g.setting.label for g in groups)) or "none"
        raise UserError(f"--eval-baseline {spec!r} matches no evaluation row; the settings are: {settings}")
    free = [f for f in SAME if f not in wanted]
    pairs = []
    for group in (g for g in groups if all(g is not b for b in baselines)):
        found = [
            b
            for b in baselines
            if b.cell is group.cell and all(getattr(b.setting, f) == getattr(group.setting, f) for f in free)
        ]
        if len(found) > 1:
            raise UserError(
                f"--eval-baseline {spec!r} matches {len(found)} settings to compare {group.setting.label} "
                f"with ({'; '.join(b.setting.label for b in found)}); add fields that pick one"
            )
        if found:
            pairs.append((group, found[0]))
    return pairs


# ------------------------------------------------------------------------------------------------ --baseline
# Heun's 2n - 1 evaluations (9, 19, 49, 99) meet a first-order sampler's 10, 20, 50, 100.
STEPS_TOLERANCE = 0.1


def pair_with_baseline_cell(groups: list[EvalGroup], baseline: Cell) -> list[tuple[EvalGroup, EvalGroup]]:
    """(group, its baseline) for every group of another cell: the baseline cell's group at the same guidance
    and samples per set whose network evaluations (``steps``) are nearest, within 10% of the larger: with the
    same sampler where the baseline has it, else (another formulation's samplers) the one with the best mean of
    the first score, so each cell meets the baseline's best sampler at that budget. Groups with none are left
    out."""
    own = [g for g in groups if g.cell is baseline]
    pairs = []
    for group in (g for g in groups if g.cell is not baseline and g.setting.steps is not None):
        steps = group.setting.steps
        near = [
            b
            for b in own
            if b.setting.steps is not None
            and (b.setting.guidance, b.setting.n) == (group.setting.guidance, group.setting.n)
            and abs(b.setting.steps - steps) <= STEPS_TOLERANCE * max(b.setting.steps, steps)
        ]
        same = [
            b
            for b in near
            if (b.setting.sampler, b.setting.eta) == (group.setting.sampler, group.setting.eta)
        ]
        near = same or near
        if near:
            nearest = min(abs(b.setting.steps - steps) for b in near)
            pairs.append((group, _best([b for b in near if abs(b.setting.steps - steps) == nearest])))
    return pairs


def _best(candidates: list[EvalGroup]) -> EvalGroup:
    for score in SCORES:
        scored = [g for g in candidates if g.values(score.key)]
        if scored:
            sign = -1.0 if score.better == "max" else 1.0
            return min(scored, key=lambda g: sign * sum(g.values(score.key)) / len(g.values(score.key)))
    return candidates[0]
