"""Multiruns for the launcher and search tests: a sweep run to its end in a subprocess, and its folder read back.

proc, sweep = run_sweep(tmp_path, "hydra/launcher=ray_cpu", "schedule=linear,cosine", ...)
assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
runs = job_dirs(sweep)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import CPU_ONLY, SMALL_RUN, TINY_MODEL, cli_env, dedupe_overrides


def run_sweep(
    cwd: Path,
    *overrides: str,
    script: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> tuple[subprocess.CompletedProcess, Path]:
    """``python -m diffusion_lab.train -m <overrides>`` (``python <script> -m ...`` for a script in ``cwd``) run
    from ``cwd`` into ``cwd``/sweep, in ``cli_env`` (plus ``env``); returns the finished process, its output
    captured as text, and the sweep folder."""
    sweep = cwd / "sweep"
    entry = [script] if script else ["-m", "diffusion_lab.train"]
    return subprocess.run(
        [sys.executable, *entry, "-m", *overrides, f"hydra.sweep.dir={sweep}"],
        cwd=cwd,
        env={**cli_env(cwd), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    ), sweep


def run_report(sweep: Path) -> subprocess.CompletedProcess:
    """``python -m diffusion_lab.report <sweep>`` (it writes the sweep's report.md), in ``cli_env``; its output
    captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "diffusion_lab.report", str(sweep)],
        env=cli_env(sweep.parent),
        capture_output=True,
        text=True,
        timeout=300,
    )


def tiny_run(*overrides: str) -> list[str]:
    """The overrides of the tests' tiny CPU run (``CPU_ONLY``, ``SMALL_RUN``, a tiny UNet) with ``overrides``
    after them, each key once: the last wins (``schedule.num_timesteps=choice(0,50)`` replaces the 50)."""
    return dedupe_overrides([*CPU_ONLY, *SMALL_RUN, *TINY_MODEL["UNet"], *overrides])


def job_dirs(sweep: Path) -> list[Path]:
    """The folders of the sweep's jobs (each holding its .hydra/config.yaml), sorted by name."""
    return sorted(p.parent.parent for p in sweep.glob("*/.hydra/config.yaml"))


def sweep_status(sweep: Path) -> dict:
    """The gpu_pool launcher's record of the sweep (sweep_status.json): its jobs, their status, folders, logs."""
    return json.loads((sweep / "sweep_status.json").read_text())
