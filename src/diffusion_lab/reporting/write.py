"""Put a sweep's report together: read the jobs, split complete / incomplete / failed, build the tables and
figures, render Markdown and HTML."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..io import atomic_path
from ..spec_keys import SPEC_KEYS
from .cells import Cell, find_baseline, group_cells
from .curves import curve_tables
from .eval_tables import eval_baseline_table, eval_cell_baseline_table, eval_seed_table
from .evalcells import EvalGroup, group_evaluations, pair_with_baseline, pair_with_baseline_cell
from .plots import PLOTS_DIR, make_plots
from .raw import gather_raw, gathered_names, keep_raw, read_settings, write_settings
from .render import Figure, Report, render
from .runs import Job, find_jobs, label_jobs, stopped_early
from .scores import FRECHET, score
from .search import search_table
from .tables import Table, baseline_table, eval_table, job_table, seed_table

__all__ = ["write_report"]

INCOMPLETE = (
    "Incomplete jobs: stopped (trainer.max_time) before trainer.max_steps; not ranked and left out of the "
    "means over seeds"
)


def _sort(jobs: list[Job]) -> tuple[list[Job], str]:
    """By the first Fréchet distance the jobs have (FID, else FD on classifier features), else val loss."""
    found = [f.key for f in FRECHET if any(j.value(f.key) is not None for j in jobs)]
    key = found[0] if found else "val_loss"

    def order(j: Job) -> tuple:
        v = j.value(key)
        number = j.num if j.num is not None else math.inf
        return (j.failed, v is None, v or 0.0, number, j.label)

    return sorted(jobs, key=order), key


def _intro(sweep: str, jobs: list[Job], sort_key: str, common: list[str]) -> list[str]:
    n_failed = sum(j.status not in ("COMPLETED", "unknown") for j in jobs)
    n_incomplete = sum(j.incomplete for j in jobs)
    n_partial = sum(stopped_early(e) for j in jobs for e in j.evaluations)
    counts = "".join(
        [
            f", {n_failed} not completed" if n_failed else "",
            f", {n_incomplete} incomplete" if n_incomplete else "",
            f", {n_partial} evaluation(s) stopped before their last setting (see Notes)" if n_partial else "",
        ]
    )
    sorted_by = score(sort_key).header if sort_key != "val_loss" else "validation loss"
    sorted_by += " (lower is better)"
    intro = [
        f"Sweep: `{sweep}` — {len(jobs)} job(s){counts}",
        f"Sorted by {sorted_by}; ★ marks the best value of a column.",
        "FID / IS (Inception) and FD / classifier score (classifier features; not comparable with Inception "
        "numbers): the best row of the job's `evaluate` runs on those features when there are any (among the "
        "settings every evaluated job shares, at their largest sample count), else the "
        "last value logged in training; bits/dim: the full bound from `evaluate`; val bits/dim (one-t MC est.): validation's "
        "one-timestep Monte-Carlo estimate of the unclipped bound (noisy; not the full bound).",
    ]
    if common:
        intro.append("Common overrides: " + " ".join(f"`{o}`" for o in common))
    return intro + _components(jobs) + _code_versions(jobs) + _devices(jobs) + _evaluation_code_versions(jobs)


def _components(jobs: list[Job]) -> list[str]:
    """The component classes every job's resolved config shares (a preset's choices, which no override shows),
    then the groups whose class differs between jobs."""
    found = [c for job in jobs if (c := job.config.get("components"))]  # jobs whose resolved config is kept
    if not found:
        return []
    # a group some jobs lack (a flow process has no noise schedule) counts as varying, its absence a value
    seen = {group: {c.get(group) for c in found} for group in SPEC_KEYS if any(group in c for c in found)}
    shared = [f"{group} `{next(iter(c))}`" for group, c in seen.items() if len(c) == 1]
    varying = [group for group, c in seen.items() if len(c) > 1]
    line = "Components (the jobs' resolved configs; an evaluation may set its own sampler): " + (
        ", ".join(shared) or "none shared by every job"
    )
    return [line + (f"; varying between jobs: {', '.join(varying)}." if varying else ".")]


def _code_versions(jobs: list[Job]) -> list[str]:
    """Which code the jobs ran (their runs' ``code_sha256``): one line naming it, or, when they differ, a
    warning that says which jobs ran which, since a difference between them may then come from the code."""
    return _provenance_line(
        jobs,
        lambda job: job.code,
        12,
        one="Code: every job ran one version (`{}`).",
        several="**Code: the jobs ran {} versions**, so a difference between them may come from the code",
        seeds_one=" Each seed's jobs ran one version, so every difference paired by seed compares jobs of one version.",
        seeds_mixed=" The jobs of seed(s) {} ran more than one version: their paired differences may come from the code.",
    )


def _devices(jobs: list[Job]) -> list[str]:
    """Which GPU model (or the CPU) the jobs trained on, from their provenance: one line naming it, or, when they
    differ (sweeps of more seeds run on another machine and pooled), a warning saying which jobs ran where and
    whether each seed's jobs ran on one, so that every difference paired by seed compares jobs of one kind."""
    return _provenance_line(
        jobs,
        lambda job: job.device,
        None,
        one="Device: every job ran on one kind (`{}`).",
        several="**Devices: the jobs ran on {} kinds**, so a difference between them may come from the machine "
        "(speeds above all)",
        seeds_one=" Each seed's jobs ran on one kind, so every difference paired by seed compares jobs of one kind.",
        seeds_mixed=" The jobs of seed(s) {} ran on more than one kind: their paired differences may come from the "
        "machine.",
    )


def _provenance_line(
    jobs: list[Job],
    value: Callable[[Job], str | None],
    cut: int | None,
    *,
    one: str,
    several: str,
    seeds_one: str,
    seeds_mixed: str,
) -> list[str]:
    """One line on a value each job's provenance records (code digest, device), shown cut to ``cut``
    characters: ``one`` with the value where every job has the same; else ``several`` (with the count), which
    jobs had which, and, with a seed axis (pooled sweeps of other seeds, say), whether each seed's jobs agree
    (``seeds_one``) or which seeds' do not (``seeds_mixed``, with them). Nothing where none recorded it."""
    by_value: dict[str | None, list[str]] = {}
    for job in jobs:
        by_value.setdefault(value(job), []).append(job.label)
    recorded = sorted(v for v in by_value if v is not None)
    if not recorded:
        return []  # runs from before the value was recorded
    if len(by_value) == 1:
        return [one.format(recorded[0][:cut])]
    mixed = _seeds_that_differ(jobs, value)
    within = ""
    if mixed is not None:
        within = seeds_mixed.format(", ".join(map(str, mixed))) if mixed else seeds_one
    return [f"{several.format(len(by_value))}: {_listed(by_value, cut)}.{within}"]


def _seeds_that_differ(jobs: list[Job], value: Callable[[Job], str | None]) -> list[int] | None:
    """The seeds whose jobs differ in ``value`` (code version, device); None without a seed axis (under two
    seeds)."""
    by_seed: dict[int, set[str | None]] = {}
    for job in jobs:
        if job.seed is not None:
            by_seed.setdefault(job.seed, set()).add(value(job))
    if len(by_seed) < 2:
        return None
    return sorted(seed for seed, values in by_seed.items() if len(values) > 1)


def _listed(by_value: dict[str | None, list[str]], cut: int | None = 12) -> str:
    """'`value` (labels); ...; none recorded (labels)' for a recorded value (a code digest, a device) and the
    labels that recorded it, by value (cut to ``cut`` characters), the unrecorded last."""
    parts = [
        f"`{value[:cut]}` ({', '.join(labels)})" if value else f"none recorded ({', '.join(labels)})"
        for value, labels in sorted(by_value.items(), key=lambda item: (item[0] is None, item[0] or ""))
    ]
    return "; ".join(parts)


def _evaluation_code_versions(jobs: list[Job]) -> list[str]:
    """Which code the jobs' evaluations ran (each ``evaluation.json``'s provenance ``code_sha256``): one line naming
    it, or a warning saying which evaluations ran which, since rows scored by other code (a sampler changed
    between two evaluations of one checkpoint) may then differ for that reason."""
    by_code: dict[str | None, list[str]] = {}
    for job in jobs:
        for e in job.evaluations:
            code = ((e["summary"] or {}).get("provenance") or {}).get("code_sha256")
            by_code.setdefault(code, []).append(f"{job.label}: {e['name']}")
    recorded = sorted(code for code in by_code if code is not None)
    if not recorded:
        return []  # evaluations from before the digest was recorded, or none
    if len(by_code) == 1:
        own = " (the jobs' own)" if {job.code for job in jobs} == set(recorded) else ""
        return [f"Evaluations: every evaluation ran one version (`{recorded[0][:12]}`){own}."]
    warning = (
        f"**Evaluations: they ran {len(by_code)} versions**, so rows scored by different versions may differ "
        "because of the code"
    )
    return [f"{warning}: {_listed(by_code)}."]


def _eval_tables(groups: list[EvalGroup], eval_baseline: str | None, bases: list[Cell]) -> list[Table]:
    tables = []
    if any(len(g.rows) > 1 for g in groups) or eval_baseline:
        tables.append(eval_seed_table(groups))
    if eval_baseline:
        tables.append(eval_baseline_table(pair_with_baseline(groups, eval_baseline), eval_baseline))
    for base in bases:
        across = pair_with_baseline_cell(groups, base)
        if across:
            tables.append(eval_cell_baseline_table(across, base.label))
    return tables


def _as_list(baseline: str | list[str] | None) -> list[str]:
    """``--baseline`` given once (a string, as a kept raw folder records it), several times, or not at all."""
    if not baseline:
        return []
    return [baseline] if isinstance(baseline, str) else list(baseline)


def _find_baselines(cells: list[Cell], specs: list[str]) -> list[Cell]:
    """The cell each spec picks; two specs that pick one cell would print its tables twice: refused."""
    found = [find_baseline(cells, spec) for spec in specs]
    for i, cell in enumerate(found):
        if cell in found[:i]:
            first = specs[found.index(cell)]
            raise UserError(
                f"--baseline {first!r} and --baseline {specs[i]!r} pick the same cell ({cell.label}); "
                "name each baseline cell once"
            )
    return found


def _tables(
    jobs: list[Job],
    cells: list[Cell],
    curve_cells: list[Cell],
    baselines: list[str],
    groups: list[EvalGroup],
    eval_baseline: str | None,
) -> list[Table]:
    ranked = [j for j in jobs if not j.incomplete]
    incomplete = [j for j in jobs if j.incomplete]
    tables = [job_table(ranked)] if ranked else []
    if incomplete:
        tables.append(job_table(incomplete, INCOMPLETE, ranked=False))
    if any(len(c.jobs) > 1 for c in cells) or baselines:
        tables.append(seed_table(cells))
    bases = _find_baselines(cells, baselines)
    for spec, base in zip(baselines, bases):
        tables.append(baseline_table(cells, base))
        tables += curve_tables(curve_cells, find_baseline(curve_cells, spec))
    tables += _eval_tables(groups, eval_baseline, bases)
    evaluations = eval_table(jobs)
    if evaluations.rows:
        tables.append(evaluations)
    return tables


def _samples(jobs: list[Job], out: Path) -> list[Figure]:
    found = [(j, j.dir / "samples" / "final.png") for j in jobs]
    return [Figure(j.label, p, os.path.relpath(p, out)) for j, p in found if p.is_file()]


def _analyse(root: Path, baselines: list[str], eval_baseline: str | None) -> tuple:
    """Read the jobs under ``root`` and build every table; a bad baseline fails here, before any write.
    Returns (jobs, their common overrides, the sort key, the curve cells, evaluation groups, their notes,
    tables)."""
    jobs = find_jobs(root)
    common = label_jobs(jobs, root)
    jobs, sort_key = _sort(jobs)
    cells = group_cells(jobs)
    curve_cells = group_cells(jobs, with_incomplete=True)  # curves compare at equal steps, whatever the end
    groups, group_notes = group_evaluations(cells)
    tables = _tables(jobs, cells, curve_cells, baselines, groups, eval_baseline)
    search = search_table(root)
    if search is not None:
        tables.insert(0, search)
    return jobs, common, sort_key, curve_cells, groups, group_notes, tables


def _make_report_folder(out: Path) -> None:
    """Create the report's folder, or refuse in one line naming it (a path below a file, a read-only place)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or str(err)
        raise UserError(
            f"--out {out}: cannot create the report folder there ({reason}); name a folder you can write"
        ) from None


def _write_gathered(
    roots: list[Path],
    out_dir: str | Path | None,
    title: str | None,
    baseline: str | list[str] | None,
    raw_dest: str | Path | None,
    eval_baseline: str | None,
) -> dict[str, Path]:
    """Several sweeps (more seeds run later, say) reported as one: their raw files gathered below
    ``raw_dest``, one folder per sweep, and the report made from there (default ``out_dir``: its parent), so
    it rebuilds from that folder alone. Each sweep must hold jobs before anything is copied; settings whose
    baseline names no cell are not left behind."""
    if raw_dest is None:
        raise UserError(
            f"{len(roots)} sweeps given: several sweeps are reported together from one copy of their raw "
            "files; add --keep-raw DEST (the report goes beside DEST unless --out says where)"
        )
    resolved = [root.resolve() for root in roots]
    for i, a in enumerate(resolved):
        for b in resolved[i + 1 :]:
            if a.is_relative_to(b) or b.is_relative_to(a):
                raise UserError(
                    f"{a} and {b}: a sweep named twice, or one inside another, would count its jobs twice; "
                    "name each sweep once"
                )
    for root in roots:
        find_jobs(root)  # a folder without jobs: one line naming it, before anything is copied
    dest = Path(raw_dest)
    out = Path(out_dir) if out_dir else dest.parent
    _make_report_folder(out)
    gather_raw(roots, dest)
    baselines = _as_list(baseline)
    names = ", ".join(gathered_names(roots))
    kept = {
        "title": title or f"Sweep report: {names}",
        "baseline": baselines[0] if len(baselines) == 1 else baselines or None,
        "eval_baseline": eval_baseline,
        "sweep": ", ".join(str(root.resolve()) for root in roots),
    }
    settings = write_settings(dest, kept)
    try:
        return write_report(dest, out)  # the tables built once, from the gathered copy and these settings
    except UserError:
        settings.unlink()  # a baseline that names no cell: kept, it would fail every rebuild
        raise


def write_report(
    root: str | Path | list[str | Path],
    out_dir: str | Path | None = None,
    title: str | None = None,
    baseline: str | list[str] | None = None,
    raw_dest: str | Path | None = None,
    eval_baseline: str | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the figures for the sweep under ``root`` into ``out_dir``
    (default ``root``); with ``raw_dest``, first keep the sweep's raw files there and report from that copy.
    ``root`` may list several sweeps: they are gathered below ``raw_dest`` and reported as one.
    ``baseline`` names the cell others are compared with (a list: each in turn), ``eval_baseline`` the
    evaluation setting others are compared with within each cell. Returns the paths written."""
    roots = [Path(r) for r in root] if isinstance(root, (list, tuple)) else [Path(root)]
    if len(roots) > 1:
        return _write_gathered(roots, out_dir, title, baseline, raw_dest, eval_baseline)
    root = roots[0]
    settings = read_settings(root)
    title = title or settings.get("title") or f"Sweep report: {root.resolve().name}"
    baselines = _as_list(baseline) or _as_list(settings.get("baseline"))
    baseline = baselines[0] if len(baselines) == 1 else baselines or None  # as kept: one is a string
    eval_baseline = eval_baseline or settings.get("eval_baseline")
    sweep = settings.get("sweep") or str(root.resolve())
    out = Path(out_dir) if out_dir else root
    if raw_dest is not None:
        # A folder without jobs or a bad baseline is a one-line error before anything is copied: a kept raw
        # folder records its baselines, and one it could not be reported with would fail every rebuild.
        _analyse(root, baselines, eval_baseline)
        _make_report_folder(out)  # nor is a report folder that cannot be made
        kept = {"title": title, "baseline": baseline, "eval_baseline": eval_baseline, "sweep": sweep}
        keep_raw(root, Path(raw_dest), kept)
        root = Path(raw_dest)
    jobs, common, sort_key, curve_cells, groups, group_notes, tables = _analyse(
        root, baselines, eval_baseline
    )
    _make_report_folder(out)
    plots = make_plots([j for j in jobs if not j.incomplete], curve_cells, groups, out / PLOTS_DIR)
    report = Report(
        title=title,
        intro=_intro(sweep, jobs, sort_key, common),
        tables=tables,
        figures=[Figure(name, path, f"{PLOTS_DIR}/{path.name}") for name, path in plots.items()],
        samples=_samples(jobs, out),
        failed=[f"{j.label}: exit {j.exit_code}, log `{j.log}`" for j in jobs if j.failed],
        notes=[f"{j.label}: {note}" for j in jobs for note in j.notes] + group_notes,
    )
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    for fmt, key in (("md", "markdown"), ("html", "html")):
        with atomic_path(paths[key]) as tmp:
            tmp.write_text(render(report, fmt))
    return {**paths, **plots}
