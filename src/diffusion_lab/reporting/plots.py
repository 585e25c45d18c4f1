"""The report's figures: per-job curves, loss by timestep, each Fréchet distance (FID on Inception, FD on
classifier features: separate figures) against sampling steps per job and as mean ± CI bands over seeds per
sampler setting, and training curves as mean ± CI bands over seeds. PNGs are written without a creation stamp or software tag, so a rebuilt figure is the same file."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from ..io import atomic_path
from ..score_names import NUM_BUCKETS, bucket_key
from .cells import Cell
from .curves import common_steps
from .evalcells import EvalGroup, Setting
from .runs import Job, num
from .scores import FRECHET, Score
from .stats import CONFIDENCE, t_interval

__all__ = ["make_plots", "PLOTS_DIR", "seeds_label"]

PLOTS_DIR = "report_plots"
PNG_METADATA = {"Software": None}  # matplotlib's version would differ between machines
SKIPPED_CURVES = ("metrics/eval_seconds",)


class _Figures:
    """Saves figures into one folder and remembers them by title, in the order made."""

    def __init__(self, out: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt, self.out, self.made = plt, out, {}
        out.mkdir(parents=True, exist_ok=True)

    def new(self):
        return self.plt.subplots(figsize=(7, 4.2))

    def save(self, fig, ax, name: str, title: str) -> None:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = self.out / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png", metadata=PNG_METADATA)
        self.plt.close(fig)
        self.made[title] = path


def _training_curves(figs: _Figures, jobs: list[Job]) -> None:
    for key, title, ylabel, name in [
        *[
            (f"metrics/{f.key}", f"{f.header} over training", f.header, f"{f.key}_over_training.png")
            for f in FRECHET
        ],
        ("val/loss", "Validation loss over training", "val loss", "val_loss_over_training.png"),
    ]:
        series = [(j.label, j.series[key]) for j in jobs if j.series.get(key)]
        if series:
            fig, ax = figs.new()
            for label, points in series:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=label)
            ax.set(xlabel="training step", ylabel=ylabel, title=title)
            figs.save(fig, ax, name, title)


def _loss_by_timestep(figs: _Figures, jobs: list[Job]) -> None:
    buckets = [bucket_key(k) for k in range(NUM_BUCKETS)]
    bucketed = [j for j in jobs if any(b in j.last for b in buckets)]
    if not bucketed:
        return
    fig, ax = figs.new()
    xs = [(k + 0.5) / NUM_BUCKETS for k in range(NUM_BUCKETS)]
    for j in bucketed:
        # An empty bucket (no sample of t in it since the last log) is logged as exactly 0: a gap here.
        ax.plot(xs, [j.last.get(b) or math.nan for b in buckets], marker="o", ms=3, label=j.label)
    ax.set(xlabel="timestep t / T (bucket centre)", ylabel="training loss (last logged)")
    ax.set_title("Loss by timestep bucket")
    ax.set_yscale("log")
    figs.save(fig, ax, "loss_by_timestep.png", "Loss by timestep bucket")


def _sampling_curves(jobs: list[Job], key: str) -> list[tuple[str, list[tuple[float, float]]]]:
    curves = []
    for j in jobs:
        for e in j.evaluations:
            # one curve per evaluation setting but its step count (and samples per set)
            groups: dict[Setting, list[tuple[float, float]]] = {}
            for r in e["rows"]:
                steps, value = num(r.get("steps")), num(r.get(key))
                if steps is not None and value is not None:
                    groups.setdefault(replace(Setting.of(r), steps=None, n=None), []).append((steps, value))
            for setting, points in groups.items():
                named = replace(setting, sampler=str(setting.sampler or e["name"]))
                label = " ".join(x for x in (j.label if len(jobs) > 1 else "", named.line) if x)
                curves.append((label, sorted(points)))
    return curves


def _steps_axis(ax, steps: set[float]) -> None:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    if len(steps) <= 12:
        ax.set_xticks(sorted(steps))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())


def _score_vs_steps(figs: _Figures, jobs: list[Job], score: Score) -> None:
    curves = _sampling_curves(jobs, score.key)
    if not curves:
        return
    fig, ax = figs.new()
    for label, points in curves:
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=label)
    title = f"{score.header} against sampling steps"
    ax.set(xlabel="sampling steps (network evaluations)", ylabel=score.header, title=title)
    _steps_axis(ax, {p[0] for _, points in curves for p in points})
    figs.save(fig, ax, f"{score.key}_vs_steps.png", title)


def _lines(groups: list[EvalGroup], key: str) -> dict[str, list[EvalGroup]]:
    """The groups with ``key`` by plot line (cell and sampler setting; samples per set where they vary)."""
    cells = {id(g.cell) for g in groups}
    sizes = {g.setting.n for g in groups}
    lines: dict[str, list[EvalGroup]] = {}
    for g in groups:
        if g.setting.steps is not None and g.values(key):
            parts = [g.cell.label if len(cells) > 1 else "", g.setting.line]
            parts.append(f"n={g.setting.n:g}" if len(sizes) > 1 and g.setting.n is not None else "")
            lines.setdefault(" ".join(p for p in parts if p), []).append(g)
    return lines


def seeds_label(intervals) -> str:
    """The seeds behind a line's points: 'n=3', or 'n=1–3' where some points have fewer (a partial run)."""
    low, high = min(i.n for i in intervals), max(i.n for i in intervals)
    return f"n={high}" if low == high else f"n={low}–{high}"


def _score_vs_steps_over_seeds(figs: _Figures, groups: list[EvalGroup], score: Score) -> None:
    lines = _lines(groups, score.key)
    if not lines:
        return
    fig, ax = figs.new()
    for label, line in lines.items():
        line = sorted(line, key=lambda g: g.setting.steps)
        steps = [g.setting.steps for g in line]
        intervals = [t_interval(g.values(score.key)) for g in line]
        seeds = max(i.n for i in intervals)
        ax.plot(
            steps, [i.mean for i in intervals], marker="o", ms=3, label=f"{label} ({seeds_label(intervals)})"
        )
        if seeds > 1:
            ax.fill_between(steps, [i.low for i in intervals], [i.high for i in intervals], alpha=0.2)
    title = f"{score.header} against sampling steps: mean ± {CONFIDENCE:.0%} CI over seeds"
    ax.set(xlabel="sampling steps (network evaluations)", ylabel=score.header, title=title)
    _steps_axis(ax, {g.setting.steps for line in lines.values() for g in line})
    figs.save(fig, ax, f"{score.key}_vs_steps_over_seeds.png", title)


def curve_metrics(cells: list[Cell]) -> list[str]:
    """Metrics logged over training (validation and in-training sample quality) by the cells' jobs."""
    keys = {k for c in cells for j in c.jobs for k in j.series if k.startswith(("val/", "metrics/"))}
    return sorted(k for k in keys if k not in SKIPPED_CURVES)


def _bands(figs: _Figures, cells: list[Cell]) -> None:
    for key in curve_metrics(cells):
        steps = common_steps(cells, key)
        if not steps:
            continue
        fig, ax = figs.new()
        for cell in cells:
            per_step = [dict(j.series[key]) for j in cell.jobs]
            intervals = [t_interval(d[s] for d in per_step) for s in steps]
            means = [i.mean for i in intervals]
            ax.plot(steps, means, marker="o", ms=3, label=f"{cell.label} (n={len(cell.jobs)})")
            if len(cell.jobs) > 1:
                ax.fill_between(steps, [i.low for i in intervals], [i.high for i in intervals], alpha=0.2)
        title = f"{key} over training: mean ± {CONFIDENCE:.0%} CI over seeds"
        ax.set(xlabel="training step", ylabel=key, title=title)
        figs.save(fig, ax, f"seeds_{key.replace('/', '_')}.png", title)


def make_plots(jobs: list[Job], cells: list[Cell], groups: list[EvalGroup], out: Path) -> dict[str, Path]:
    """Every figure the data allow, into ``out``; returns their paths by title."""
    figs = _Figures(out)
    _training_curves(figs, jobs)
    _loss_by_timestep(figs, jobs)
    for score in FRECHET:
        _score_vs_steps(figs, jobs, score)
        if any(len(g.rows) > 1 for g in groups):
            _score_vs_steps_over_seeds(figs, groups, score)
    if any(len(c.jobs) > 1 for c in cells):
        _bands(figs, cells)
    return figs.made
