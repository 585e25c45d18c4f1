"""Datasets and the Lightning datamodule of diffusion_lab.

The names below load on first use (PEP 562): ``diffusion_lab.data.splits`` and the command lines that check a split
name stay free of torch and Lightning, while ``diffusion_lab.data.DiffusionDataModule`` (the configs' ``_target_``)
and the rest import as before."""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module of this package that defines it
_HOMES = {
    "DATASETS": "datamodule",
    "DeviceBatches": "datamodule",
    "DiffusionDataModule": "datamodule",
    **{
        name: "datasets"
        for name in (
            "EncodedDataset",
            "ImageFileDataset",
            "PointDataset",
            "TensorImageDataset",
            "cifar10",
            "digits",
            "fashion_mnist",
            "gaussian_mixture",
            "image_folder",
            "mnist",
            "read_idx",
            "swiss_roll",
            "toy2d",
            "two_moons",
        )
    },
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
