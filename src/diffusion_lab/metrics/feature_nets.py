"""Feature extractors for sample-quality metrics.

All extractors take images in [-1, 1] of shape (B, C, H, W), C in {1, 3}, and return (B, D) float32 features;
those that also provide class logits (for the Inception Score) return them from ``features_and_logits``.

* :class:`InceptionFeatures` wraps torch-fidelity's ``FeatureExtractorInceptionV3`` -- the TF-compatible
  "pt_inception-2015-12-05" network the field's FID numbers are computed with (torchmetrics' FID wraps the very
  same class). Resizing to 299x299 (TF1-compatible bilinear) and the (x - 128) / 128 normalisation happen inside
  the torch-fidelity extractor; we only convert [-1, 1] floats to uint8 the way saved PNGs are quantised and
  repeat grayscale to RGB.
* :class:`ClassifierFeatures` uses the small domain classifier of :mod:`diffusion_lab.metrics.classifier`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.io import file_sha256
from diffusion_lab.metrics.classifier import load_classifier

__all__ = [
    "INCEPTION_URL",
    "ClassifierFeatures",
    "FeatureExtractor",
    "InceptionFeatures",
    "build_feature_extractor",
    "extract_features",
    "images_to_uint8",
    "inception_weights_cache_path",
    "resolve_inception_weights",
]


def _inception_url() -> str:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        return URL_INCEPTION_V3
    except ImportError:  # pragma: no cover - torch-fidelity is a hard dependency; keep the module importable
        return (
            "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
            "weights-inception-2015-12-05-6726825d.pth"
        )


#: where torch-fidelity (and torchmetrics' FID) downloads the FID Inception-v3 weights from
INCEPTION_URL = _inception_url()


def inception_weights_cache_path() -> Path:
    """The file torch-fidelity's ``torch.hub.load_state_dict_from_url`` reads/writes:
    ``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth`` (default ``~/.cache/torch``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(INCEPTION_URL).path)


def resolve_inception_weights(
    weights_path: str | os.PathLike | None, allow_download: bool = False
) -> str | None:
    """Path to hand to torch-fidelity as ``feature_extractor_weights_path``.

    Returns the explicit path or the torch-hub cache file if present; ``None`` (= let torch-fidelity download
    into the hub cache) only when ``allow_download``. Otherwise raises a one-line ``FileNotFoundError``.
    """
    if weights_path is not None:
        p = Path(weights_path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"Inception weights file not found: {p} (metrics.inception_weights=PATH)")
        return str(p)
    cached = inception_weights_cache_path()
    if cached.is_file():
        return str(cached)
    if allow_download:
        return None
    raise FileNotFoundError(
        f"FID Inception-v3 weights not found at {cached}: download {INCEPTION_URL} to that path "
        f"(or anywhere and pass metrics.inception_weights=PATH), or set allow_download=True when online"
    )


def images_to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 in [0, 255], rounding like a PNG save (torchvision.utils.save_image / EDM:
    ``(x * 127.5 + 128).clip(0, 255).to(uint8)``), so in-memory features equal those of the saved images.
    uint8 input passes through unchanged."""
    if images.dtype == torch.uint8:
        return images
    return (images.float() * 127.5 + 128.0).clamp_(0, 255).to(torch.uint8)


def _check_images(images: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"expected images of shape (B, C, H, W) with C in {{1, 3}}, got {tuple(images.shape)}"
        )


class FeatureExtractor(nn.Module):
    """Base class: frozen, always in eval mode, autocast disabled (features must not depend on AMP settings).

    Attributes: ``num_features`` (D), ``num_logits`` (0 when no logits are provided), ``feature_id`` (a string
    identifying network + weights + layer, for real-feature cache keys).
    """

    kind: str = ""  # "inception" or "classifier": what the metrics computed on these features are called
    num_features: int = 0
    num_logits: int = 0
    feature_id: str = ""

    def describe(self) -> dict[str, Any]:
        """Which network and weights the features come from, for an evaluation's provenance."""
        raise NotImplementedError

    @property
    def provides_logits(self) -> bool:
        return self.num_logits > 0

    def train(self, mode: bool = True) -> FeatureExtractor:  # never leaves eval mode (BatchNorm statistics)
        return super().train(False)

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    @torch.no_grad()
    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, D) float32 features and (B, K) float32 logits (``None`` if not provided)."""
        _check_images(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            feats, logits = self._features_and_logits(images)
        return feats.float(), (logits.float() if logits is not None else None)

    def forward(self, images: Tensor) -> Tensor:
        return self.features_and_logits(images)[0]


class InceptionFeatures(FeatureExtractor):
    """FID Inception-v3 (TF 2015-12-05 weights) through torch-fidelity's ``FeatureExtractorInceptionV3``.

    ``feature`` in {64, 192, 768, 2048} selects the layer (2048 = pool3, the FID/KID/PR standard); the IS logits
    are torch-fidelity's ``logits_unbiased`` (its default for the Inception Score). Weights are loaded by
    torch-fidelity itself via ``feature_extractor_weights_path`` (``torch.load`` of a state dict); see
    :func:`resolve_inception_weights` for the lookup order. No download unless ``allow_download=True``.
    """

    kind = "inception"
    FEATURES = (64, 192, 768, 2048)

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        feature: int = 2048,
        *,
        allow_download: bool = False,
        with_logits: bool = True,
    ) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if int(feature) not in self.FEATURES:
            raise ValueError(f"feature must be one of {self.FEATURES}, got {feature}")
        self.feature = int(feature)
        path = resolve_inception_weights(weights_path, allow_download)
        features_list = [str(self.feature)] + (["logits_unbiased"] if with_logits else [])
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", features_list, feature_extractor_weights_path=path, verbose=False
        )
        self.weights_path = path if path is not None else str(inception_weights_cache_path())
        self.num_features = self.feature
        self.num_logits = 1008 if with_logits else 0
        self.feature_id = f"inception-v3-compat:{Path(self.weights_path).name}:{self.feature}"
        self.train(False)

    def describe(self) -> dict[str, Any]:
        weights = Path(self.weights_path)
        return {
            "network": "inception",
            "name": "FID Inception-v3 (TF 2015-12-05 weights, torch-fidelity's inception-v3-compat)",
            "layer": self.feature,
            "weights": str(weights),
            "sha256": file_sha256(weights) if weights.is_file() else None,
            "feature_id": self.feature_id,
        }

    def _features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        x = images_to_uint8(images)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        out = self.net(x.contiguous())
        return out[0], (out[1] if self.num_logits else None)


class ClassifierFeatures(FeatureExtractor):
    """Penultimate (128-d) features and logits of a domain classifier saved by ``save_classifier``.

    Grayscale inputs are repeated to RGB for a 3-channel classifier; inputs of another resolution are resized
    (bilinear, antialiased) to the classifier's training resolution.
    """

    kind = "classifier"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.model = load_classifier(path)
        self.model.requires_grad_(False)
        self.path = str(Path(path).expanduser())
        self.in_channels = self.model.in_channels
        self.image_size = self.model.image_size
        self.num_features = self.model.feature_dim
        self.num_logits = self.model.num_classes
        self.sha256 = file_sha256(self.path)
        self.feature_id = f"classifier:{self.sha256[:16]}"
        self.train(False)

    def describe(self) -> dict[str, Any]:
        return {
            "network": "classifier",
            "name": "domain classifier (python -m diffusion_lab.features)",
            "path": str(Path(self.path).resolve()),
            "sha256": self.sha256,
            "num_features": self.num_features,
            "feature_id": self.feature_id,
        }

    def _features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
        c = x.shape[1]
        if c != self.in_channels:
            if c == 1:
                x = x.expand(-1, 3, -1, -1)
            else:
                raise ValueError(f"classifier expects {self.in_channels}-channel images, got {c} channels")
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        feats = self.model.features(x)
        return feats, self.model.logits_from_features(feats)


def build_feature_extractor(
    kind: str, path: str | os.PathLike | None = None, *, allow_download: bool = False, feature: int = 2048
) -> FeatureExtractor:
    """``kind='inception'`` (``path`` = optional Inception weights file) or ``'classifier'`` (``path`` required)."""
    kind = kind.lower()
    if kind == "inception":
        return InceptionFeatures(path, feature=feature, allow_download=allow_download)
    if kind == "classifier":
        if path is None:
            raise ValueError(
                "feature extractor 'classifier' needs the path of a checkpoint saved by save_classifier"
            )
        return ClassifierFeatures(path)
    raise ValueError(f"unknown feature extractor kind {kind!r} (expected 'inception' or 'classifier')")


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    batches: Iterable[Tensor | tuple | list],
    max_samples: int | None = None,
    device: str | torch.device | None = None,
    with_logits: bool = False,
) -> Tensor | tuple[Tensor, Tensor | None]:
    """Run ``extractor`` over an iterable of image batches (or (images, labels, ...) tuples, e.g. a DataLoader)
    and return the concatenated (N, D) features on CPU (plus logits when ``with_logits``)."""
    device = torch.device(device) if device is not None else extractor.device
    extractor.to(device)
    feats: list[Tensor] = []
    logits: list[Tensor] = []
    n = 0
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if max_samples is not None:
            x = x[: max_samples - n]
        if len(x) == 0:
            break
        f, lg = extractor.features_and_logits(x.to(device, non_blocking=True))
        feats.append(f.cpu())
        if lg is not None:
            logits.append(lg.cpu())
        n += len(x)
        if max_samples is not None and n >= max_samples:
            break
    if not feats:
        raise ValueError("extract_features: no images")
    out = torch.cat(feats)
    if with_logits:
        return out, (torch.cat(logits) if logits else None)
    return out
