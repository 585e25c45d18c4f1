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
    evaluations: dict[str, list[dict]] | None = None,
    code: str | None = None,
    eval_codes: dict[str, str] | None = None,
    device: str | None = None,
) -> Path:
    """One job folder: ``curves`` {metric: {step: value}} go to csv/metrics.csv (one row per step and
    metric, as Lightning's CSV logger writes them), ``fid`` to evaluation/last/evaluation.json, and each of
    ``evaluations`` {name: rows} to evaluation/<name>/evaluation.json, ``code`` (a code digest) to
    .hydra/provenance.yaml (``device``, the GPU model, beside it), ``eval_codes`` {name: digest} to those
    evaluations' provenance."""
    job = root / f"{num}_{','.join(overrides)}"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    config = {"seed": seed, "trainer": {"max_steps": max_steps, "log_every_n_steps": log_every}}
    for o in overrides:
        key, value = o.split("=", 1)
        if key == "seed":
            config["seed"] = int(value)
    OmegaConf.save(OmegaConf.create(config), job / ".hydra" / "config.yaml")
    provenance = {k: v for k, v in (("code_sha256", code), ("device", device)) if v is not None}
    if provenance:  # the run's provenance, as train writes it (the digest and device alone matter here)
        OmegaConf.save(OmegaConf.create(provenance), job / ".hydra" / "provenance.yaml")
    (job / "csv").mkdir()
    keys = sorted(curves)
    with open(job / "csv" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["step", *keys])
        writer.writeheader()
        for key in keys:
            for step, value in sorted(curves[key].items()):
                writer.writerow({"step": step, key: value})
    evaluations = dict(evaluations or {})
    if fid is not None:
        evaluations["last"] = [{"sampler": "ddpm", "steps": 50, "fid": fid}]
    for name, rows in evaluations.items():
        (job / "evaluation" / name).mkdir(parents=True)
        code_of = (eval_codes or {}).get(name)
        summary = {"provenance": {"code_sha256": code_of}} if code_of else {}
        (job / "evaluation" / name / "evaluation.json").write_text(
            json.dumps({"summary": summary, "rows": rows})
        )
    return job


def eval_row(sampler: str, eta: float | None, steps: int, sets: list[float], kd: float = 0.01) -> dict:
    """An `evaluate` row on classifier features (``features=PATH``) with ``len(sets)`` sample sets."""
    mean = sum(sets) / len(sets)
    std = (sum((v - mean) ** 2 for v in sets) / (len(sets) - 1)) ** 0.5 if len(sets) > 1 else None
    return {
        "sampler": sampler,
        "eta": eta,
        "steps": steps,
        "guidance": 0.0,
        "features": "classifier",
        "n": 500,
        "sample_sets": len(sets),
        "fd_classifier": mean,
        "fd_classifier_std": std,
        "fd_classifier_values": sets,
        "kd_classifier_mean": kd,
        "kd_classifier_std": kd / 10,
    }


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


def seeded_sweep(
    root: Path,
    effect: float,
    seeds: list[int],
    noise: float,
    rng,
    cells: tuple[str, ...] = ("schedule=linear", "schedule=cosine"),
    code: str | None = None,
    device: str | None = None,
) -> Path:
    """The ``cells`` x seeds: each seed shifts every cell alike (sd 1), each job adds its own noise (sd
    ``noise``); cell i's val loss is i * ``effect`` higher than the first's and its FID i * ``effect`` lower.
    ``code`` / ``device``: the code digest / GPU model every job records."""
    jobs = []
    for seed in seeds:
        shared = rng.normal(0.0, 1.0)
        for i, cell in enumerate(cells):
            shift = i * effect
            loss = 5.0 + shared + shift + rng.normal(0.0, noise)
            fid = 20.0 + shared - shift + rng.normal(0.0, noise)
            curve = {s: loss + (100 - s) / 100 for s in (9, 49, 99)}
            overrides = [f"seed={seed}", cell]
            jobs.append(
                write_job(root, len(jobs), overrides, {"val/loss": curve}, fid=fid, code=code, device=device)
            )
    write_status(root, jobs)
    return root


def example_study(root: Path) -> Path:
    """A small study as a sweep leaves it, scored on classifier features: two cells x three seeds, one job
    stopped early by its time limit, one failed job, an in-training FD curve, a final sample grid, and each
    model evaluated with DDPM and DDIM (eta 0) at 10 and 50 steps on two sample sets."""
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
                "metrics/fd_classifier": {
                    s: round(30 + shared + shift + (100 - s) / 10 + rng.normal(0, 0.2), 6) for s in steps
                },
            }
            evaluations = {}
            for name, sampler, eta, gain in (("ddpm", "ddpm", None, 0.0), ("ddim_eta0", "ddim", 0.0, 1.0)):
                rows = []
                for n_steps in (10, 50):
                    fd = 25 + shared + shift + 40 / n_steps - gain * 30 / n_steps
                    sets = [round(fd + rng.normal(0.0, 0.3), 6) for _ in range(2)]
                    kd = round(0.02 + fd / 2000 + rng.normal(0.0, 0.0002), 6)
                    rows.append(eval_row(sampler, eta, n_steps, sets, kd))
                evaluations[name] = rows
            overrides = [f"seed={seed}", f"schedule={schedule}"]
            jobs.append(write_job(root, len(jobs), overrides, curves, evaluations=evaluations))
    early = {"val/loss": {9: 0.1}, "metrics/fd_classifier": {9: 12.0}}
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
