"""A small domain classifier for 28x28 / 32x32 images (MNIST-, CIFAR-like data).

Its 128-d penultimate features give a domain-specific Fréchet distance ("FID" with a network trained on the
data itself), which is far more informative than Inception features for tiny grayscale images, and its logits
give a domain classifier score. Neither torchmetrics nor torch-fidelity ship such a network, so it is
hand-written here, with a plain-torch training loop (fast: no Lightning overhead).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.io import atomic_write

__all__ = [
    "CLASSIFIER_FORMAT",
    "SmallClassifier",
    "evaluate_accuracy",
    "load_classifier",
    "save_classifier",
    "train_classifier",
]

CLASSIFIER_FORMAT = "diffusion_lab.metrics.classifier"
CLASSIFIER_FORMAT_VERSION = 1


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SmallClassifier(nn.Module):
    """VGG-style CNN: 2x(conv) -> pool -> 2x(conv) -> pool -> conv(feature_dim) -> global avg pool -> linear.

    Inputs are images in [-1, 1] of shape (B, in_channels, H, W); ``features(x)`` returns the (B, feature_dim)
    penultimate (globally pooled) features, ``forward(x)`` the (B, num_classes) logits.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        width: int = 32,
        feature_dim: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.config: dict[str, Any] = dict(
            in_channels=in_channels,
            num_classes=num_classes,
            image_size=image_size,
            width=width,
            feature_dim=feature_dim,
            dropout=dropout,
        )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = image_size
        self.feature_dim = feature_dim
        self.meta: dict[str, Any] = {}  # filled by load_classifier
        w = width
        self.body = nn.Sequential(
            _conv_block(in_channels, w),
            _conv_block(w, w),
            nn.MaxPool2d(2),
            _conv_block(w, 2 * w),
            _conv_block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv_block(2 * w, feature_dim),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features, (B, feature_dim)."""
        return self.body(x)

    def logits_from_features(self, feats: Tensor) -> Tensor:
        return self.head(self.dropout(feats))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits_from_features(self.features(x))


def _as_float_images(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1]; float images are assumed to be in [-1, 1] already."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    return images.float()


def _random_shift(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Random translation by up to ``pad`` pixels (replicate padding + random crop), one offset per batch."""
    h, w = x.shape[-2:]
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    i, j = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return xp[..., i : i + h, j : j + w]


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> float:
    """Top-1 accuracy of ``model`` on (images, labels); the model is put in eval mode."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = _as_float_images(images[i : i + batch_size]).to(device, non_blocking=True)
        y = labels[i : i + batch_size].to(device, non_blocking=True)
        correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / max(1, len(images))


def train_classifier(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    epochs: int = 5,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    *,
    num_classes: int | None = None,
    lr: float = 2e-3,
    weight_decay: float = 5e-4,
    width: int = 32,
    augment: bool = False,
    seed: int = 0,
    verbose: bool = False,
    progress: bool | None = False,
) -> tuple[SmallClassifier, float]:
    """Train a :class:`SmallClassifier` with AdamW + one-cycle LR; returns (model in eval mode, test accuracy).

    Images: (N, C, H, W) with C in {1, 3}, float in [-1, 1] (the generator's output range) or uint8.
    ``augment`` adds random +-2 pixel shifts (safe for digits and natural images alike). ``progress``: a bar
    of the optimizer steps over all epochs (None: only on a terminal).
    """
    from tqdm.auto import tqdm

    if train_images.ndim != 4 or train_images.shape[1] not in (1, 3):
        raise ValueError(
            f"train_images must be (N, C, H, W) with C in {{1, 3}}, got {tuple(train_images.shape)}"
        )
    if len(train_images) != len(train_labels) or len(test_images) != len(test_labels):
        raise ValueError("images and labels must have the same length")
    device = torch.device(device)
    train_labels = train_labels.long()
    test_labels = test_labels.long()
    if num_classes is None:
        num_classes = int(max(int(train_labels.max()), int(test_labels.max()) if len(test_labels) else 0)) + 1
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    c, h, w = train_images.shape[1:]
    model = SmallClassifier(in_channels=c, num_classes=num_classes, image_size=max(h, w), width=width).to(
        device
    )

    steps_per_epoch = (len(train_images) + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch), pct_start=0.25
    )
    bar = tqdm(
        total=epochs * steps_per_epoch, desc="classifier", disable=None if progress is None else not progress
    )
    for epoch in range(epochs):
        mean_loss = _train_epoch(model, opt, sched, train_images, train_labels, batch_size, gen, augment, bar)
        bar.set_postfix(epoch=epoch + 1, loss=f"{mean_loss:.4f}")
        if verbose:
            print(f"[classifier] epoch {epoch + 1}/{epochs} train loss {mean_loss:.4f}")
    bar.close()
    acc = evaluate_accuracy(model, test_images, test_labels, batch_size=max(batch_size, 512), device=device)
    if verbose:
        print(f"[classifier] test accuracy {acc:.4f}")
    model.eval()
    return model, acc


def _train_epoch(
    model, opt, sched, images: Tensor, labels: Tensor, batch_size: int, gen, augment: bool, bar
) -> float:
    """One pass over the images in the order ``gen`` draws; returns the mean training loss."""
    device = next(model.parameters()).device
    model.train()
    n = len(images)
    perm = torch.randperm(n, generator=gen)
    total_loss = 0.0
    for k in range((n + batch_size - 1) // batch_size):
        idx = perm[k * batch_size : (k + 1) * batch_size]
        x = _as_float_images(images[idx]).to(device, non_blocking=True)
        y = labels[idx].to(device, non_blocking=True)
        if augment:
            x = _random_shift(x, 2, gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total_loss += float(loss.detach()) * len(idx)
        bar.update(1)
    return total_loss / n


def save_classifier(
    model: SmallClassifier, path: str | os.PathLike, meta: Mapping[str, Any] | None = None
) -> Path:
    """Atomically save ``model`` (config + state dict + JSON-serialisable ``meta``) to ``path``."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CLASSIFIER_FORMAT,
        "version": CLASSIFIER_FORMAT_VERSION,
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        # stored as a JSON string so that the file loads with torch.load(weights_only=True)
        "meta": json.dumps(dict(meta or {}), sort_keys=True, default=str),
    }
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


def load_classifier(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SmallClassifier:
    """Load a classifier written by :func:`save_classifier`; returns it in eval mode with ``.meta`` (dict)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier checkpoint not found: {path} (train one with train_classifier/save_classifier)"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle/zip errors: not a torch file, or a torch file with arbitrary objects
        raise ValueError(
            f"{path} is not a diffusion_lab classifier checkpoint (written by save_classifier): "
            f"torch.load failed with {type(e).__name__}: {e}"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != CLASSIFIER_FORMAT:
        got = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{path} is not a diffusion_lab classifier checkpoint (written by save_classifier): expected a dict with "
            f"format={CLASSIFIER_FORMAT!r}, got {got}"
        )
    if payload.get("version") != CLASSIFIER_FORMAT_VERSION:
        raise ValueError(
            f"{path}: unsupported classifier checkpoint version {payload.get('version')!r} "
            f"(this code reads version {CLASSIFIER_FORMAT_VERSION})"
        )
    model = SmallClassifier(**payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.meta = json.loads(payload.get("meta") or "{}")
    return model.eval()
