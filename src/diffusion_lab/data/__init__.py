"""Datasets and the Lightning datamodule of diffusion_lab."""

from __future__ import annotations

from diffusion_lab.data.datamodule import DATASETS, DeviceBatches, DiffusionDataModule
from diffusion_lab.data.datasets import (
    EncodedDataset,
    ImageFileDataset,
    PointDataset,
    TensorImageDataset,
    cifar10,
    digits,
    fashion_mnist,
    gaussian_mixture,
    image_folder,
    mnist,
    read_idx,
    swiss_roll,
    toy2d,
    two_moons,
)

__all__ = [
    "DATASETS",
    "DeviceBatches",
    "DiffusionDataModule",
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
]
