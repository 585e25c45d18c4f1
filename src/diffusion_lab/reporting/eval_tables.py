"""The tables of evaluation rows over seeds: each (cell, setting) as mean ± t-interval over seeds with the
estimator's own spread beside it, and each setting's paired difference from the ``--eval-baseline`` setting."""

from __future__ import annotations

import statistics

from .evalcells import EvalGroup, sample_set_spread
from .scores import SCORES, Score
from .stats import CONFIDENCE, paired_difference, t_interval
from .tables import BETTER_NOTE, Entry, Table, difference_text, mean_ci

__all__ = ["eval_seed_table", "eval_baseline_table", "eval_cell_baseline_table"]

WITHIN = "within-checkpoint std (sample sets)"
BETWEEN = "seed-to-seed std"


def _scores(groups: list[EvalGroup]) -> list[Score]:
    return [s for s in SCORES if any(g.values(s.key) for g in groups)]


def _setting(group: EvalGroup) -> list[Entry]:
    n = group.setting.n
    return [Entry(group.cell.label), Entry(group.setting.label), Entry("" if n is None else f"{n:g}")]


def _spreads(group: EvalGroup, key: str) -> list[Entry]:
    spread = sample_set_spread(group, key)
    values = group.values(key)
    within = "" if spread is None else f"{spread[0]:.2g} (S={spread[1]})"
    between = f"{statistics.stdev(values):.2g}" if len(values) > 1 else ""
    return [Entry(within), Entry(between)]


def eval_seed_table(groups: list[EvalGroup]) -> Table:
    """Each (cell, evaluation setting): mean ± the t-interval over seeds of every score; for a Fréchet
    distance scored on several sample sets, also the pooled within-checkpoint std and the seed-to-seed std."""
    scores = _scores(groups)
    spread = {s.key for s in scores if s.frechet and any(sample_set_spread(g, s.key) for g in groups)}
    header = ["cell", "setting", "samples/set", "seeds"]
    for s in scores:
        header += [
            s.header,
            *([f"{s.header}: {WITHIN}", f"{s.header}: {BETWEEN}"] if s.key in spread else []),
        ]
    table = Table("Evaluations over seeds", header)
    table.notes.append(
        f"One model per seed, each evaluated with every setting: mean ± half-width of the {CONFIDENCE:.0%} "
        "Student-t interval over seeds (one row per seed); seeds: how many."
    )
    if spread:
        table.notes.append(
            f"{WITHIN}: the std of one sample set's score around its checkpoint's mean, pooled over the seeds' "
            "checkpoints (√(Σ(S_i − 1)·s_i² / Σ(S_i − 1)), S: fewest sets per checkpoint); a seed's score (the "
            f"mean of its S sets) carries metric noise of about that std / √S. {BETWEEN}: the std of the seeds' "
            "scores; the closer it is to the metric noise, the more of the spread over seeds is the estimator's."
        )
    for group in groups:
        row = [*_setting(group), Entry(str(len(group.rows)))]
        for s in scores:
            row.append(Entry(mean_ci(t_interval(group.values(s.key)))))
            row += _spreads(group, s.key) if s.key in spread else []
        table.rows.append(row)
    return table


def eval_baseline_table(pairs: list[tuple[EvalGroup, EvalGroup]], spec: str) -> Table:
    """Each setting minus its baseline setting within a cell, paired by seed (the same model)."""
    note = (
        f"setting − baseline setting ({spec}, at the same steps unless it names them), paired by seed (the same "
        "model sampled both ways)"
    )
    return _difference_table(pairs, f"Evaluation differences from {spec}", note)


def eval_cell_baseline_table(pairs: list[tuple[EvalGroup, EvalGroup]], baseline: str) -> Table:
    """Each cell's settings minus the baseline cell's at (about) the same network evaluations, paired by seed
    (same seed: the same initial weights, data order and timestep draws)."""
    note = (
        f"setting − the baseline cell's ({baseline}) setting at the same number of network evaluations (steps; "
        "within 10%, so Heun's 2n − 1 meets a first-order sampler's 2n) and samples per set, with the same sampler, or "
        "the baseline's best there where it has not that sampler; paired by seed (same initial weights, data order and "
        "timestep draws)"
    )
    return _difference_table(
        pairs, f"Evaluations: difference from {baseline} at equal network evaluations", note
    )


def _difference_table(pairs: list[tuple[EvalGroup, EvalGroup]], title: str, note: str) -> Table:
    groups = [g for pair in pairs for g in pair]
    scores = _scores(groups)
    table = Table(title, ["cell", "setting", "samples/set", "baseline", *[s.header for s in scores]])
    table.notes.append(
        f"{note}: mean ± half-width of the {CONFIDENCE:.0%} Student-t interval of the per-seed differences, n "
        "pairs. " + BETTER_NOTE
    )
    for group, baseline in pairs:
        row = [*_setting(group), Entry(baseline.setting.label)]
        for s in scores:
            diff = paired_difference(group.by_seed(s.key), baseline.by_seed(s.key))
            row.append(Entry(difference_text(diff, s.better)))
        table.rows.append(row)
    return table
