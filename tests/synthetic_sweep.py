"""Job folders as a sweep leaves them, written directly (no training): overrides, config, metrics.csv, an
evaluation and the launcher's status file. For the report's tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from omegaconf import OmegaConf


def write_job(
    root: Path,
    num: int,
    overrides: list[str],
    curves: dict[str, dict[int, float]],
    fid: float | None = None,
    max_steps: int = 100,
    log_every: int = 10,
    seed: int = 42,
) -> Path:
    """One job folder: ``curves`` {metric: {step: value}} go to csv/metrics.csv (one row per step and
    metric, as Lightning's CSV logger writes them), ``fid`` to evaluation/last/evaluation.json."""
    job = root / f"{num}_{','.join(overrides)}"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    config = {"seed": seed, "trainer": {"max_steps": max_steps, "log_every_n_steps": log_every}}
    for o in overrides:
        key, value = o.split("=", 1)
        if key == "seed":
            config["seed"] = int(value)
    OmegaConf.save(OmegaConf.create(config), job / ".hydra" / "config.yaml")
    (job / "csv").mkdir()
    keys = sorted(curves)
    with open(job / "csv" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["step", *keys])
        writer.writeheader()
        for key in keys:
            for step, value in sorted(curves[key].items()):
                writer.writerow({"step": step, key: value})
    if fid is not None:
        (job / "evaluation" / "last").mkdir(parents=True)
        rows = [{"sampler": "ddpm", "steps": 50, "fid": fid}]
        (job / "evaluation" / "last" / "evaluation.json").write_text(
            json.dumps({"summary": {}, "rows": rows})
        )
    return job


def write_status(root: Path, jobs: list[Path], status: str = "COMPLETED") -> None:
    records = [
        {
            "num": i,
            "status": status,
            "exit_code": 0,
            "duration_s": 60.0,
            "dir": str(j),
            "log": f"{j.name}.log",
        }
        for i, j in enumerate(jobs)
    ]
    (root / "sweep_status.json").write_text(json.dumps({"sweep_dir": str(root), "jobs": records}))


def seeded_sweep(root: Path, effect: float, seeds: list[int], noise: float, rng) -> Path:
    """schedule=linear and schedule=cosine x seeds: each seed shifts both cells alike (sd 1), each job adds
    its own noise (sd ``noise``); cosine's val loss is ``effect`` higher and its FID ``effect`` lower."""
    jobs = []
    for seed in seeds:
        shared = rng.normal(0.0, 1.0)
        for schedule, shift in (("linear", 0.0), ("cosine", effect)):
            loss = 5.0 + shared + shift + rng.normal(0.0, noise)
            fid = 20.0 + shared - shift + rng.normal(0.0, noise)
            curve = {s: loss + (100 - s) / 100 for s in (9, 49, 99)}
            overrides = [f"seed={seed}", f"schedule={schedule}"]
            jobs.append(write_job(root, len(jobs), overrides, {"val/loss": curve}, fid=fid))
    write_status(root, jobs)
    return root


def example_study(root: Path) -> Path:
    """A small study as a sweep leaves it: two cells x three seeds, one job stopped early by its time limit,
    one failed job, an in-training FID curve and a final sample grid."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    jobs = []
    for seed in (1, 2, 3):
        shared = rng.normal(0.0, 0.5)
        for schedule, shift in (("linear", 0.0), ("cosine", -0.8)):
            steps = (9, 49, 99)
            curves = {
                "val/loss": {
                    s: round(0.2 + (shared - shift) / 10 + (100 - s) / 500 + rng.normal(0, 0.01), 6)
                    for s in steps
                },
                "metrics/fid": {
                    s: round(30 + shared + shift + (100 - s) / 10 + rng.normal(0, 0.2), 6) for s in steps
                },
            }
            fid = round(25 + shared + shift + rng.normal(0.0, 0.2), 6)
            jobs.append(write_job(root, len(jobs), [f"seed={seed}", f"schedule={schedule}"], curves, fid=fid))
    early = {"val/loss": {9: 0.1}, "metrics/fid": {9: 12.0}}
    jobs.append(write_job(root, len(jobs), ["seed=4", "schedule=cosine"], early))
    (jobs[0] / "samples").mkdir()
    Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(jobs[0] / "samples" / "final.png")
    write_status(root, jobs)
    failed = root / f"{len(jobs)}_seed=4,schedule=linear"
    (failed / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(["seed=4", "schedule=linear"]), failed / ".hydra" / "overrides.yaml")
    status = json.loads((root / "sweep_status.json").read_text())
    status["jobs"].append(
        {
            "num": len(jobs),
            "status": "FAILED",
            "exit_code": 1,
            "duration_s": 2.0,
            "dir": str(failed),
            "log": "x.log",
        }
    )
    (root / "sweep_status.json").write_text(json.dumps(status))
    return root
