"""What a benchmark ran on: date, git commit, a digest of the code, package versions, GPU and CPU -- the manifest
of benchmarks/run.py.

The code digests name the code that ran even where git's metadata does not (a copy of the tree whose ``.git`` is
older than its files, an unpacked archive). A manifest records three: ``code_sha256`` over the package, its
configs and the benchmark and study scripts; ``package_sha256`` over the package and its configs alone, the digest
every training run and evaluation records as its own ``code_sha256`` (``diffusion_lab.provenance``), so a
record and a run's provenance compare directly; and ``scripts_sha256`` over the scripts alone.
``python benchmarks/run_manifest.py --commit REV`` prints the three of a commit's tree, and a record whose
digests equal them ran that commit's code; without ``--commit`` it prints the working tree's; ``--find DIGEST``
(or its first 8+ hex digits, as a report prints 12) lists the recent commits with that digest.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
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


def commit_files(commit: str, root: Path = ROOT, blobs: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The code files of a commit's tree; ``blobs`` (git object id -> content) caches contents across commits."""
    blobs = {} if blobs is None else blobs
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-tree", "-r", commit], capture_output=True, text=True, check=True
    ).stdout
    wanted = {}
    for line in listing.splitlines():
        meta, path = line.split("\t", 1)
        _mode, kind, sha = meta.split()
        if kind == "blob" and is_code(path):
            wanted[path] = sha
    blobs.update(read_blobs([sha for sha in set(wanted.values()) if sha not in blobs], root))
    return {path: blobs[sha] for path, sha in wanted.items()}


def read_blobs(shas: list[str], root: Path) -> dict[str, bytes]:
    """The contents of git blobs, read by one ``git cat-file --batch``."""
    if not shas:
        return {}
    out = subprocess.run(
        ["git", "-C", str(root), "cat-file", "--batch"], input="\n".join(shas).encode() + b"\n",
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    contents, at = {}, 0
    for sha in shas:  # each answer: "<sha> blob <size>\n<content>\n", in the order asked
        header_end = out.index(b"\n", at)
        size = int(out[at:header_end].split()[2])
        contents[sha] = out[header_end + 1 : header_end + 1 + size]
        at = header_end + 1 + size + 1
    return contents


def find_commits(prefix: str, root: Path = ROOT, limit: int = 500) -> list[tuple[str, str, str]]:
    """(commit, digest name, subject) for each of the last ``limit`` commits of HEAD's history with a digest
    starting with ``prefix``, newest first: which commit(s) a record's or a run's digest names."""
    git = ["git", "-C", str(root)]
    log = subprocess.run(
        [*git, "log", f"--max-count={limit}", "--format=%H %s"], capture_output=True, text=True, check=True
    ).stdout
    blobs: dict[str, bytes] = {}
    found = []
    for line in log.splitlines():
        commit, _, subject = line.partition(" ")
        for key, value in digests(commit_files(commit, root, blobs)).items():
            if value.startswith(prefix):
                found.append((commit, key, subject))
    return found


def digests(files: dict[str, bytes]) -> dict[str, str]:
    """The three digests of a tree's code files (``tree_files`` or ``commit_files``): all of them, the package's
    under the names its runs hash them by, and the benchmark and study scripts."""
    package = {name: data for path, data in files.items() if (name := package_name(path))}
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
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--commit", help="a git revision: the digests of its tree instead of the working tree's"
    )
    which.add_argument(
        "--find",
        metavar="DIGEST",
        help="a digest or its first 8+ hex digits: the commits of HEAD's last 500 with it",
    )
    opts = parser.parse_args(argv)
    if opts.find is not None:
        return print_found(opts.find.lower())
    for key, value in digests(commit_files(opts.commit) if opts.commit else tree_files()).items():
        print(f"{key} {value}")
    return 0


def print_found(prefix: str) -> int:
    if not re.fullmatch(r"[0-9a-f]{8,64}", prefix):
        print(f"run_manifest.py: --find {prefix!r}: give 8 to 64 hex digits of a digest", file=sys.stderr)
        return 2
    found = find_commits(prefix)
    for commit, key, subject in found:
        print(f"{commit[:12]} {key} {subject[:80]}")
    if not found:
        print(
            f"run_manifest.py: no commit of HEAD's last 500 has a digest starting {prefix}", file=sys.stderr
        )
    return 0 if found else 1


if __name__ == "__main__":
    raise SystemExit(main())
