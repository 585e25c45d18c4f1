"""A sweep stopped by SIGTERM in the middle of its jobs, continued with ``hydra.launcher.resume=true``, against
the same sweep run without a stop: its statuses, wall times, and whether every job ends with the weights of the
uninterrupted one. The record behind RELIABILITY.md's numbers on continuing a sweep.

    python scripts/sweep_stop_continue.py --out /tmp/stop_continue --stop-after 100

Four small CPU trainings on scikit-learn's digits (offline), two at a time; the stop falls where the first two
have completed and the next two are training. Writes ``<out>/record.json`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

SWEEP = [
    *("experiment=fmnist_cpu", "trainer=cpu", "trainer.max_time=null", "trainer.enable_progress_bar=false"),
    *("data=digits", "model.base_channels=16", "trainer.max_steps=300", "trainer.val_check_interval=50"),
    *("callbacks.checkpoint.every_n_train_steps=50", "final_samples=16", "hydra.launcher.max_parallel=2"),
    "seed=1,2,3,4",
]


def run_sweep(folder: Path, env: dict[str, str], *extra: str, stop_after: float | None = None) -> dict:
    """One multirun into ``folder``; SIGTERM to it after ``stop_after`` seconds. Its exit status, seconds and
    the launcher's lines."""
    started = time.time()
    command = [sys.executable, "-m", "diffusion_lab.train", "-m", *SWEEP, f"hydra.sweep.dir={folder}", *extra]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if stop_after is not None:
        time.sleep(stop_after)
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate()
    lines = [
        line for line in out.splitlines() if line.startswith("[gpu_pool]") and " started on " not in line
    ]
    return {"exit": proc.returncode, "seconds": round(time.time() - started, 1), "launcher": lines}


def compare(stopped: Path, whole: Path) -> list[dict]:
    """Per job: its status and attempts, its final step, and whether its EMA weights equal the uninterrupted
    job's."""
    rows = []
    for job in json.loads((stopped / "sweep_status.json").read_text())["jobs"]:
        name = Path(job["dir"]).name
        a = torch.load(stopped / name / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
        b = torch.load(whole / name / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
        equal = all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])
        rows.append(
            {
                "job": name,
                "status": job["status"],
                "attempts": [x["status"] for x in job.get("attempts", [])],
                "steps": [a["global_step"], b["global_step"]],
                "ema_weights_equal": equal and a["state_dict"].keys() == b["state_dict"].keys(),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="a folder for the two sweeps (emptied first)")
    parser.add_argument("--stop-after", type=float, default=100.0, help="seconds before the SIGTERM")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    env = {
        **os.environ,
        "DIFFUSION_LAB_ROOT": str(args.out),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv),
        "stopped": run_sweep(args.out / "sweep", env, stop_after=args.stop_after),
        "continued": run_sweep(args.out / "sweep", env, "hydra.launcher.resume=true"),
        "uninterrupted": run_sweep(args.out / "whole", env),
    }
    record["jobs"] = compare(args.out / "sweep", args.out / "whole")
    (args.out / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    print(f"record: {args.out / 'record.json'}")


if __name__ == "__main__":
    main()
