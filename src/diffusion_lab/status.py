"""What every run under a folder is doing: running (with its ETA), done, stopped, failed (with its error) or lost.

    python -m diffusion_lab.status outputs/<task_name>/multirun/<time>      # a sweep
    python -m diffusion_lab.status outputs/studies/iddpm                    # a study: all its sweeps
    python -m diffusion_lab.status outputs/<task_name>/runs/<time>          # one run
    python -m diffusion_lab.status outputs/ --watch 30                      # again every 30 s until all ended

Each run's state comes from its own record (``run_status.json``) and its launcher's (``sweep_status.json``),
checked against its process: a run recorded as running whose run lock is free and whose process is gone was
killed outright (kill -9, out of memory, a lost machine) and is shown LOST, never as running; the jobs of a SLURM
sweep are where SLURM says they are (one ``squeue``, then ``sacct``, for all of them). Steps come from the
run's metrics and checkpoints, the ETA from its last logged speed, "last output" from the newest of its log,
metrics and checkpoints (a run that wrote nothing for long may hang). Failed runs show their error line, and
where jobs were evaluated a column counts their evaluations: done, running (a partial table whose process
lives) and stopped (partial, to continue with evaluate's ``resume=true``). The
summary ends with the commands that continue what stopped: a sweep with ``hydra.launcher.resume=true``, a run on
its own with ``ckpt_path=last resume_dir=RUN``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from .errors import friendly_errors, refuse
from .reporting.job_state import ACTIVE, JobState, evaluation_state, job_state
from .reporting.runs import STATUS_FILE, Job, find_jobs
from .reporting.slurm import slurm_states

__all__ = ["main", "run", "statuses"]

ORDER = (
    "RUNNING",
    "STARTING",
    "QUEUED",
    "LOST",
    "FAILED",
    "INTERRUPTED",
    "INCOMPLETE",
    "COMPLETED",
    "unknown",
)
TO_CONTINUE = ("LOST", "FAILED", "INTERRUPTED")  # stopped before their end, to continue (resume)
BAR = 10  # characters of a running job's progress bar


def statuses(root: str | Path) -> list[tuple[Job, JobState]]:
    """Every job under ``root`` with its state now, labelled by its folder below ``root``."""
    jobs = find_jobs(root)
    for job in jobs:  # a launcher names a job's folder by its number and the overrides that vary in its sweep
        rel = (
            job.dir.relative_to(Path(root).resolve())
            if job.dir.is_relative_to(Path(root).resolve())
            else job.dir
        )
        job.label = str(root) if str(rel) == "." else str(rel)
    submitted = [str(j.record["slurm_job_id"]) for j in jobs if j.record.get("status") == "SUBMITTED"]
    slurm = slurm_states(submitted)  # one query for the whole folder
    return [(job, job_state(job, slurm=slurm)) for job in jobs]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _steps(s: JobState) -> str:
    if s.step is None:
        return ""
    if not s.max_steps:
        return str(s.step)
    text = f"{s.step}/{s.max_steps}"
    if s.state == "RUNNING":
        done = min(BAR, round(BAR * s.step / s.max_steps))
        text += " " + "█" * done + "░" * (BAR - done)
    return text


def _evaluations(job: Job) -> str:
    """'2 done, 1 running, 1 stopped': the job's evaluations; a partial one is running while the process
    scoring it lives (on this machine), else stopped (continue it with evaluate's resume=true)."""
    counts = Counter(evaluation_state(e) for e in job.evaluations)
    return ", ".join(f"{counts[k]} {k}" for k in ("done", "running", "stopped") if counts[k])


def _row(job: Job, s: JobState, with_evaluations: bool) -> list[str]:
    state = s.state if s.checked else f"{s.state}?"
    idle = f"{_duration(s.idle_s)} ago" if s.idle_s is not None else ""
    cells = [state, _steps(s), _duration(s.eta_s), idle] + ([_evaluations(job)] if with_evaluations else [])
    return [*cells, job.label + (f"  — {s.note}" if s.note else "")]


def table(rows: list[tuple[Job, JobState]]) -> str:
    """One line per job, the unfinished first; an evaluations column where any job was evaluated."""
    rows = sorted(
        rows, key=lambda r: (ORDER.index(r[1].state) if r[1].state in ORDER else len(ORDER), r[0].label)
    )
    with_evaluations = any(j.evaluations for j, _ in rows)
    head = ["state", "steps", "ETA", "last output"] + (["evaluations"] if with_evaluations else []) + ["job"]
    cells = [head] + [_row(j, s, with_evaluations) for j, s in rows]
    n = len(head) - 1  # the last column (the job, and its note) is not padded
    widths = [max(len(c[i]) for c in cells) for i in range(n)]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(n)) + "  " + c[n] for c in cells)


def _sweep_dir(job: Job) -> Path | None:
    """The sweep folder of a job its launcher recorded (the one holding the status file), else None."""
    if not job.record:
        return None
    return next((d for d in job.dir.parents if (d / STATUS_FILE).is_file()), None)


def _sweep_command(sweep: Path) -> str:
    """The command that continues the sweep in ``sweep``: its own overrides from its multirun.yaml."""
    from omegaconf import OmegaConf

    overrides: list[str] = []
    name = "train"
    if (sweep / "multirun.yaml").is_file():
        cfg = OmegaConf.load(sweep / "multirun.yaml")
        overrides = [str(o) for o in OmegaConf.select(cfg, "hydra.overrides.task", default=[]) or []]
        name = str(OmegaConf.select(cfg, "hydra.job.name", default="train") or "train")
    kept = [o for o in overrides if not o.startswith(("hydra.sweep.dir=", "hydra.launcher.resume="))]
    return " ".join(
        [f"python -m diffusion_lab.{name} -m", *map(shlex.quote, kept)]
        + [shlex.quote(f"hydra.sweep.dir={sweep}"), "hydra.launcher.resume=true"]
    )


def continue_commands(rows: list[tuple[Job, JobState]]) -> list[str]:
    """How to continue what stopped: one command per sweep with stopped jobs and none running, one per lone run."""
    sweeps: dict[Path, list[JobState]] = {}
    commands = []
    for job, s in rows:
        sweep = _sweep_dir(job)
        if sweep is not None:
            # A SLURM sweep has no continuation: SLURM requeues and resumes its jobs itself.
            if job.record["sweep"].get("launcher") != "slurm":
                sweeps.setdefault(sweep, []).append(s)
        elif s.state in TO_CONTINUE:
            resume = (
                job.run_status.get("resume")
                or f"python -m diffusion_lab.train ckpt_path=last resume_dir={job.dir}"
            )
            commands.append(resume)
    for sweep, states in sorted(sweeps.items()):
        # Not while its launcher or a job of it still runs: a continuation would be refused, or run twice.
        if any(s.state in TO_CONTINUE for s in states) and not any(s.state in ACTIVE for s in states):
            commands.append(_sweep_command(sweep))
    return commands


def summary(root: str | Path, rows: list[tuple[Job, JobState]]) -> str:
    counts = Counter(s.state for _, s in rows)
    parts = ", ".join(f"{counts[k]} {k.lower()}" for k in ORDER if counts[k])
    lines = [f"runs     : {len(rows)} under {root}: {parts}"]
    etas = [s.eta_s for _, s in rows if s.state == "RUNNING" and s.eta_s is not None]
    if etas:
        lines.append(
            f"running  : the last due in about {_duration(max(etas))} (at each run's last logged speed)"
        )
    unchecked = sum(not s.checked for _, s in rows)
    if unchecked:
        lines.append(
            f"unchecked: {unchecked} recorded as running on another host (marked ?; run this there to check)"
        )
    lines += [f"continue : {c}" for c in continue_commands(rows)]
    return "\n".join(["== diffusion_lab.status ==", *lines])


def _print(root: str, as_json: bool) -> list[tuple[Job, JobState]]:
    rows = statuses(root)
    if as_json:
        print(json.dumps([{"dir": str(j.dir), "label": j.label, **asdict(s)} for j, s in rows], indent=1))
    else:
        print(table(rows) + "\n\n" + summary(root, rows), flush=True)
    return rows


@friendly_errors
def main(argv: list[str] | None = None) -> list[tuple[Job, JobState]]:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_lab.status",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", help="a run folder, a multirun folder, or a folder of them")
    parser.add_argument(
        "--watch",
        type=float,
        default=None,
        metavar="SECONDS",
        help="show it again every SECONDS until no run is active",
    )
    parser.add_argument("--json", action="store_true", help="print the states as JSON, one object per run")
    # argparse's own errors as every command's: one line, exit 2
    parser.error = lambda message: refuse(f"{message} (python -m diffusion_lab.status --help)")
    args = parser.parse_args(argv)
    if args.watch is not None and args.watch <= 0:
        refuse(f"--watch {args.watch:g}: give the seconds between two looks, a number above 0")
    rows = _print(args.path, args.json)
    while args.watch is not None and any(s.state in ACTIVE for _, s in rows):
        time.sleep(args.watch)
        if sys.stdout.isatty():
            print("\033[H\033[J", end="")
        rows = _print(args.path, args.json)
    return rows


def run() -> None:
    """The ``diffusion-lab-status`` console script: ``main`` without its return value."""
    try:
        main()
    except KeyboardInterrupt:  # leaving --watch
        sys.exit(130)


if __name__ == "__main__":
    run()
