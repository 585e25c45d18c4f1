"""``LatentDataModule``: any pixel datamodule seen through a trained autoencoder (``autoencoder=PATH``).

Each split is encoded once (``encode.py``: the posterior means, cached on disk under a key of the autoencoder
checkpoint's sha256 and the data), multiplied by LDM's scale factor (1 / std of the training latents), and
served by the pixel datamodule's own loaders (shuffled and resumable, or held on the GPU with ``data.on_gpu``).
``data_shape`` is the latent shape, so the network is built for it; ``real_images`` stays the pixel data's,
so sample-quality metrics compare decoded samples with real images. ``latent_spec`` is what a diffusion
checkpoint stores about its latent space, ``decoder`` the frozen decoder it carries.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor

from ..build import load_autoencoder
from ..data.datamodule import DiffusionDataModule
from ..data.datasets import EncodedDataset
from ..errors import UserError
from .decoder import LatentDecoder
from .encode import ENCODING, cached_encoding, encode_dataset, scale_factor

__all__ = ["LatentDataModule"]

# DiffusionDataModule options that change how batches are served, not which images a split holds.
LOADER_OPTIONS = ("batch_size", "eval_batch_size", "num_workers", "pin_memory", "on_gpu", "download")
_OPTIONS = tuple(inspect.signature(DiffusionDataModule.__init__).parameters)[1:]


class LatentDataModule(DiffusionDataModule):
    def __init__(self, data: dict[str, Any], autoencoder: str, cache_dir: str):
        pixels = instantiate(data)
        if not pixels.is_image:
            raise UserError(f"autoencoder= needs image data; data.name={pixels.name} gives points")
        self.NAMES = pixels.NAMES
        super().__init__(**{k: v for k, v in pixels.hparams.items() if k in _OPTIONS})
        self.pixels = pixels
        self.autoencoder = load_autoencoder(autoencoder)
        try:
            self._latent_shape = self.autoencoder.net.latent_shape(tuple(pixels.data_shape))
        except ValueError as err:
            raise UserError(f"autoencoder={autoencoder!r}: {err}") from None
        self.cache_dir = cache_dir
        self._scale: float | None = None

    # ------------------------------------------------------------------ shapes, without reading data
    @property
    def is_image(self) -> bool:
        return True

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self._latent_shape

    @property
    def num_classes(self) -> int | None:
        return self.pixels.num_classes

    # ------------------------------------------------------------------ latents
    def cache_key(self, split: str) -> dict[str, Any]:
        """What the codes of ``split`` depend on: the autoencoder's weights, the data and the encoding."""
        options = {k: v for k, v in self.pixels.hparams.items() if k not in LOADER_OPTIONS}
        return {
            "autoencoder_sha256": self.autoencoder.sha256,
            "data_class": f"{type(self.pixels).__module__}.{type(self.pixels).__qualname__}",
            "data": options,
            "split": split,
            "mirrored": self._mirrored(split),
            "encoding": ENCODING,
        }

    def _mirrored(self, split: str) -> bool:
        return split == "train" and bool(getattr(self.pixels, "random_flip", False))

    def encoded(self, split: str) -> dict[str, Tensor]:
        """The unscaled codes of ``split`` (and their labels), from the cache or encoded now."""

        def encode() -> dict[str, Tensor]:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            net = self.autoencoder.net.to(device)
            try:
                return encode_dataset(net, self.pixels.build(split), self._mirrored(split), device)
            finally:
                net.to("cpu")

        entry = cached_encoding(self.cache_dir, self.cache_key(split), encode)
        if split == "train":
            self._scale = scale_factor(entry["codes"])
        return entry

    @property
    def scale_factor(self) -> float:
        """LDM's scale factor: 1 / std of the training split's latents."""
        if self._scale is None:
            self.encoded("train")
        return self._scale

    def build(self, split: str) -> EncodedDataset:
        entry = self.encoded(split)
        s = self.scale_factor
        mirrored = entry.get("mirrored")
        return EncodedDataset(
            entry["codes"] * s, entry["labels"], mirrored * s if mirrored is not None else None
        )

    def prepare_data(self) -> None:
        self.pixels.prepare_data()

    def real_images(self, split: str, n: int) -> Tensor:
        """Real *pixel* images: what decoded samples are scored against."""
        return self.pixels.real_images(split, n)

    # ------------------------------------------------------------------ what a diffusion checkpoint keeps
    def latent_spec(self) -> dict[str, Any]:
        return {
            "autoencoder": self.autoencoder.spec["autoencoder"],
            "image_shape": list(self.pixels.data_shape),
            "scale_factor": self.scale_factor,
            "encoding": ENCODING,
            "autoencoder_sha256": self.autoencoder.sha256,
            "autoencoder_path": self.autoencoder.path,
        }

    def decoder(self) -> LatentDecoder:
        return LatentDecoder(copy.deepcopy(self.autoencoder.net.decoder), self.scale_factor)
