"""What a benchmark ran on: date, git commit, package versions, GPU and CPU -- the manifest of benchmarks/run.py."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "lightning", "diffusers", "denoising_diffusion_pytorch", "triton", "numpy")


def git_state() -> dict:
    """The checkout's commit and whether its tracked files differ from it (null outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": None if status is None else bool(status)}


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a benchmark depends on (null where absent)."""
    from diffusion_lab.versions import package_versions

    return package_versions(PACKAGES)


def gpus() -> dict:
    """torch's view of the GPUs and nvidia-smi's name / driver lines; empty lists without either."""
    import torch

    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    smi = []
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=60)
        smi = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return {"torch_devices": names, "cuda": torch.version.cuda, "nvidia_smi": smi}


def manifest(suite: str, options: dict) -> dict:
    return {
        "suite": suite,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "versions": versions(),
        "gpu": gpus(),
        "options": options,
        "prepare": [],
        "runs": [],
    }
