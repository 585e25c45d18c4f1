"""Installed package versions, for the provenance an evaluation or a benchmark records beside its numbers."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata

__all__ = ["package_versions"]


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Python's version and each named distribution's (null where absent); torch's as the module reports it, with
    its build tag (+cu130, +cpu) that the metadata lacks, and the CUDA version it was built for."""
    import torch

    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["torch"] = torch.__version__
    found["cuda"] = torch.version.cuda
    return found
