"""What a benchmark ran on: date, git commit, a digest of the code, package versions, GPU and CPU -- the manifest
of benchmarks/run.py.

The code digests name the code that ran even where git's metadata does not (a copy of the tree whose ``.git`` is
older than its files, an unpacked archive). A manifest records three: ``code_sha256`` over the package, its
configs and the benchmark and study scripts; ``package_sha256`` over the package and its configs alone, the digest
every training run and evaluation records as its own ``code_sha256`` (``diffusion_lab.provenance``), so a
record and a run's provenance compare directly; and ``scripts_sha256`` over the scripts alone.
``python benchmarks/run_manifest.py --commit REV`` prints the three of a commit's tree, and a record whose
digests equal them ran that commit's code; without ``--commit`` it prints the working tree's.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT / "src"))  # run from a checkout, installed or not

from diffusion_lab.provenance import digest, package_name  # noqa: E402  (the package's own runs record the same kind)

PACKAGES = ("torch", "lightning", "diffusers", "denoising_diffusion_pytorch", "triton", "numpy")
CODE_TOPS = ("src/diffusion_lab", "conf", "benchmarks", "experiments")


def is_code(path: str) -> bool:
    """Whether a repository path (POSIX, relative) is code a benchmark runs: the package and its configs, the
    benchmark scripts and the study scripts -- not results, caches or docs."""
    parts = path.split("/")
    if "__pycache__" in parts or path.endswith(".pyc"):
        return False
    if path.startswith(("src/diffusion_lab/", "conf/", "experiments/lib/")):
        return True
    return parts[0] in ("benchmarks", "experiments") and len(parts) == 2 and path.endswith((".py", ".sh"))


def tree_files(root: Path = ROOT) -> dict[str, bytes]:
    """The code files of the checkout at ``root``, as they are on disk."""
    files = {}
    for top in CODE_TOPS:
        for f in (root / top).rglob("*"):
            rel = f.relative_to(root).as_posix()
            if f.is_file() and is_code(rel):
                files[rel] = f.read_bytes()
    return files


def commit_files(commit: str, root: Path = ROOT) -> dict[str, bytes]:
    """The code files of a commit's tree."""
    git = ["git", "-C", str(root)]
    names = subprocess.run(
        [*git, "ls-tree", "-r", "--name-only", commit], capture_output=True, text=True, check=True
    )
    show = [*git, "show"]
    return {
        name: subprocess.run([*show, f"{commit}:{name}"], capture_output=True, check=True).stdout
        for name in names.stdout.splitlines()
        if is_code(name)
    }


def digests(files: dict[str, bytes]) -> dict[str, str]:
    """The three digests of a tree's code files (``tree_files`` or ``commit_files``): all of them, the package's
    under the names its runs hash them by, and the benchmark and study scripts."""
    package = {package_name(path): data for path, data in files.items() if package_name(path)}
    scripts = {path: data for path, data in files.items() if path.startswith(("benchmarks/", "experiments/"))}
    return {
        "code_sha256": digest(files),
        "package_sha256": digest(package),
        "scripts_sha256": digest(scripts),
    }


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
        **digests(tree_files()),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "versions": versions(),
        "gpu": gpus(),
        "options": options,
        "prepare": [],
        "runs": [],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the code digests a benchmark manifest records.")
    parser.add_argument(
        "--commit", help="a git revision: the digests of its tree instead of the working tree's"
    )
    opts = parser.parse_args(argv)
    for key, value in digests(commit_files(opts.commit) if opts.commit else tree_files()).items():
        print(f"{key} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
