"""What code and software a result came from: a sha256 of the code a run executes -- the package's source files
and its configs -- with the package versions, the host and the time, written beside a run's config
(``.hydra/provenance.yaml``, and in each resume's record) and into an evaluation's provenance. Two results with
the same digest came from the same code, whether it ran from a checkout, an editable install or an installed
wheel, and whatever git's metadata says (a copy of a tree can carry an older ``.git`` than its files)."""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path

__all__ = ["code_sha256", "device_name", "digest", "package_files", "package_name", "run_provenance"]

PACKAGE = Path(__file__).resolve().parent
SUFFIXES = (".py", ".yaml", ".j2")  # the code, the configs, the report templates
VERSIONED = ("diffusion_lab", "torch", "lightning", "hydra-core", "omegaconf", "numpy")


def digest(files: Mapping[str, bytes]) -> str:
    """sha256 over the files' names and contents, in name order."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name] + b"\0")
    return h.hexdigest()


def package_files() -> dict[str, bytes]:
    """The package's code files as ``diffusion_lab/<path>`` and its configs as ``conf/<path>``: the same names
    for a checkout (configs in the top-level ``conf/``) and a wheel (configs in ``diffusion_lab/conf``)."""
    from .cli import CONFIG_DIR

    conf = Path(CONFIG_DIR)
    files = {}
    for f in PACKAGE.rglob("*"):
        if (
            f.is_file()
            and f.suffix in SUFFIXES
            and not f.is_relative_to(conf)
            and "__pycache__" not in f.parts
        ):
            files[f"diffusion_lab/{f.relative_to(PACKAGE).as_posix()}"] = f.read_bytes()
    for f in conf.rglob("*.yaml"):
        files[f"conf/{f.relative_to(conf).as_posix()}"] = f.read_bytes()
    return files


def package_name(repo_path: str) -> str | None:
    """The name ``package_files`` gives a checkout's file at ``repo_path`` (POSIX, relative to the repository
    root), or None where the file is not part of the digest: so a commit's tree, read from git, hashes to the
    digest its runs record."""
    parts = repo_path.split("/")
    if "__pycache__" in parts:
        return None
    if repo_path.startswith("src/diffusion_lab/") and repo_path.endswith(SUFFIXES):
        return repo_path.removeprefix("src/")
    if parts[0] == "conf" and repo_path.endswith(".yaml"):
        return repo_path
    return None


@functools.cache
def code_sha256() -> str:
    """The digest of this process's package and configs (read once: a run records the code it started with)."""
    return digest(package_files())


def device_name() -> str:
    """The GPU model this process runs on, or 'cpu': read from nvidia-smi without touching torch.cuda, which
    would start CUDA here (even ``is_available`` may), and a forked DDP worker could then not use it."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not torch.backends.cuda.is_built() or (visible is not None and visible.strip() in ("", "-1")):
        return "cpu"
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.SubprocessError):  # no driver: no GPU to run on
        listed = ""
    return visible_gpu_name(listed, visible) or "cpu"


def visible_gpu_name(listed: str, visible: str | None) -> str | None:
    """From nvidia-smi's 'index, name' lines, the name of the first GPU CUDA_VISIBLE_DEVICES shows (by index;
    the first listed where it is unset or names GPUs by UUID)."""
    names = dict(line.split(", ", 1) for line in listed.strip().splitlines() if ", " in line)
    first = (visible or "").split(",")[0].strip()
    return names.get(first) or next(iter(names.values()), None)


def run_provenance() -> dict:
    """The code digest, package versions, device, host and UTC start time of this process, as plain data."""
    from .versions import package_versions

    return {
        "code_sha256": code_sha256(),
        "versions": {k: None if v is None else str(v) for k, v in package_versions(VERSIONED).items()},
        "device": device_name(),
        "host": platform.node(),
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
