"""Dataset builders.

Every image dataset yields ``(image, label)``: ``image`` a float tensor (C, H, W) in [-1, 1], ``label`` a
long scalar (0 where the dataset has no labels). The 2-D toy sets yield ``(point (2,), label)``.

Small datasets (MNIST, Fashion-MNIST, CIFAR-10, digits) are held in memory as one uint8 tensor and converted
per item (or per batch, see :meth:`TensorImageDataset.transform`), so the same code path serves the CPU
data loader and the on-GPU batcher of the datamodule.

Splits: datasets with an official test set use it; their ``val`` split is a fixed random subset of the
official train set (``val_size`` items, drawn with ``seed``) that ``train`` then excludes. The other
datasets are split by a fixed permutation: 10 % test, ``min(val_size, 10 %)`` val, the rest train.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Sequence
from functools import lru_cache, partial
from math import prod
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .splits import SPLITS

# Where Debian's `dataset-fashion-mnist` package puts the files; module-level so tests can redirect it.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# torchvision downloads land here when data.root is not set.
DEFAULT_DOWNLOAD_ROOT = Path(".data")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TOY_KINDS = ("swiss_roll", "two_moons", "gaussian_mixture")
# Share of a dataset without an official test set that goes to the test split.
TEST_FRACTION = 0.1


# --------------------------------------------------------------------------------------------- transforms
def match_channels(x: Tensor, channels: int) -> Tensor:
    """Convert a batch (B, C, H, W) to ``channels`` channels (1 <-> 3)."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if c == 3 and channels == 1:
        # ITU-R 601 luma, the same weights PIL uses for convert("L").
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
        return (x * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    raise ValueError(f"data.channels: cannot convert {c}-channel images to {channels} channels; use 1 or 3")


def fit_to_size(x: Tensor, size: int) -> Tensor:
    """Bring a batch (B, C, H, W) in [-1, 1] to (B, C, size, size).

    Growing: upsample by the largest whole factor that fits (nearest, so pixel values stay exact), then pad
    the rest symmetrically with -1 (black), e.g. 28 -> 32 pads 2 px, 8 -> 32 upsamples x4.
    Shrinking: antialiased bilinear resize.
    """
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    factor = min(size // h, size // w)
    if factor == 0:
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if factor > 1:
        x = F.interpolate(x, scale_factor=factor, mode="nearest")
        h, w = h * factor, w * factor
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(x, (left, size - w - left, top, size - h - top), value=-1.0)


def random_hflip(x: Tensor) -> Tensor:
    """Flip each image of a batch (B, C, H, W) horizontally with probability 1/2 (on x's device)."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


# ---------------------------------------------------------------------------------------------- datasets
class TensorImageDataset(Dataset):
    """Images held in memory as one integer tensor (N, C, H, W) with values in 0..max_value.

    ``data`` stays integer (4x smaller than float); :meth:`transform` turns any batch of it into model
    input, on whatever device the batch lives, so the datamodule can run it on the GPU too.
    """

    def __init__(
        self,
        data: Tensor,
        labels: Tensor,
        max_value: float = 255.0,
        image_size: int | None = None,
        channels: int | None = None,
        random_flip: bool = False,
    ) -> None:
        if data.ndim != 4 or len(data) != len(labels):
            raise ValueError(
                f"expected data (N, C, H, W) and N labels, got {tuple(data.shape)}, {len(labels)}"
            )
        self.data = data
        self.labels = labels.long()
        self.max_value = float(max_value)
        self.image_size = image_size
        self.channels = channels
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.data)

    def transform(self, raw: Tensor, augment: bool) -> Tensor:
        """Integer batch (B, C, H, W) -> float batch in [-1, 1] at the configured channels and size."""
        x = raw.float() * (2.0 / self.max_value) - 1.0
        if self.channels is not None:
            x = match_channels(x, self.channels)
        if self.image_size is not None:
            x = fit_to_size(x, self.image_size)
        if augment and self.random_flip:
            x = random_hflip(x)
        return x.contiguous()

    def images(self, n: int) -> Tensor:
        """The first n images (B, C, H, W) in [-1, 1], never flipped."""
        return self.transform(self.data[:n], augment=False)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.data[index : index + 1], augment=True)[0], self.labels[index]


class PointDataset(Dataset):
    """2-D points (N, 2) with labels; :meth:`transform` is the identity, for the on-GPU batcher."""

    def __init__(self, data: Tensor, labels: Tensor) -> None:
        self.data = data.float()
        self.labels = labels.long()
        self.random_flip = False

    def __len__(self) -> int:
        return len(self.data)

    def transform(self, raw: Tensor, augment: bool) -> Tensor:
        return raw

    def images(self, n: int) -> Tensor:
        return self.data[:n]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.data[index], self.labels[index]


class EncodedDataset(Dataset):
    """Codes of a dataset held in memory as floats (the latents of an autoencoder), (N, C, h, w), with labels.

    With ``mirrored`` (the codes of the horizontally flipped images) ``data`` is (N, 2, C, h, w) and
    :meth:`transform` picks, per item, the plain or the mirrored code with probability 1/2 when augmenting:
    the latent counterpart of ``random_flip``, on any device, as the datamodule's on-GPU batcher needs.
    """

    def __init__(self, codes: Tensor, labels: Tensor, mirrored: Tensor | None = None) -> None:
        if codes.ndim != 4 or len(codes) != len(labels):
            raise ValueError(
                f"expected codes (N, C, h, w) and N labels, got {tuple(codes.shape)}, {len(labels)}"
            )
        self.data = codes.float() if mirrored is None else torch.stack([codes, mirrored], dim=1).float()
        self.labels = labels.long()
        self.random_flip = mirrored is not None

    def __len__(self) -> int:
        return len(self.data)

    def transform(self, raw: Tensor, augment: bool) -> Tensor:
        if not self.random_flip:
            return raw
        flip = (
            torch.rand(raw.shape[0], device=raw.device) < 0.5
            if augment
            else torch.zeros(raw.shape[0], dtype=torch.bool, device=raw.device)
        )
        return torch.where(flip.view(-1, 1, 1, 1), raw[:, 1], raw[:, 0])  # (B, C, h, w)

    def images(self, n: int) -> Tensor:
        """The first n codes (B, C, h, w), never the mirrored ones."""
        return self.transform(self.data[:n], augment=False)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.data[index : index + 1], augment=True)[0], self.labels[index]


class ImageFileDataset(Dataset):
    """Image files decoded lazily: shorter side resized to image_size, then center-cropped."""

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int],
        image_size: int,
        channels: int,
        random_flip: bool = False,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3 for image folders, got {channels}")
        self.files = list(files)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.image_size = image_size
        self.channels = channels
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Tensor:
        """Decode one file to (C, image_size, image_size) in [-1, 1]."""
        from PIL import Image  # Pillow comes with torchvision; imported here to keep import time low

        path = self.files[index]
        try:
            with Image.open(path) as img:
                img = img.convert("L" if self.channels == 1 else "RGB")
        except (OSError, SyntaxError, ValueError) as exc:  # PIL reports bad files with all three
            raise ValueError(f"cannot read image file {path} ({exc}); delete or replace it") from exc
        w, h = img.size
        scale = self.image_size / min(w, h)
        new_w, new_h = max(self.image_size, round(w * scale)), max(self.image_size, round(h * scale))
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - self.image_size) // 2, (new_h - self.image_size) // 2
        img = img.crop((left, top, left + self.image_size, top + self.image_size))
        arr = np.asarray(img, dtype=np.uint8).reshape(self.image_size, self.image_size, self.channels)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1.0

    def images(self, n: int) -> Tensor:
        return torch.stack([self.load(i) for i in range(min(n, len(self)))])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x = self.load(index)
        if self.random_flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[index]


# --------------------------------------------------------------------------------------------- splitting
def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")


def _limit(indices: np.ndarray, split: str, limit: int | None) -> np.ndarray:
    # data.limit_train keeps the first N training items, for fast CPU runs.
    return indices[:limit] if split == "train" and limit is not None else indices


def holdout_indices(n: int, split: str, val_size: int, seed: int, limit: int | None = None) -> np.ndarray:
    """Indices of ``split`` for a dataset whose official train set (n items) must also give ``val``."""
    _check_split(split)
    if split == "test":
        return np.arange(n)
    if not 0 <= val_size < n:
        raise ValueError(f"data.val_size={val_size} must be >= 0 and smaller than the training set ({n})")
    perm = np.random.default_rng(seed).permutation(n)
    # Sorted, so "the first N training items" (limit_train) follows the file order.
    chosen = perm[:val_size] if split == "val" else perm[val_size:]
    return _limit(np.sort(chosen), split, limit)


def split_indices(n: int, split: str, val_size: int, seed: int, limit: int | None = None) -> np.ndarray:
    """Indices of ``split`` for a dataset without an official split (fixed permutation by ``seed``)."""
    _check_split(split)
    n_test = int(n * TEST_FRACTION)
    n_val = min(max(val_size, 0), int(n * TEST_FRACTION))
    perm = np.random.default_rng(seed).permutation(n)
    parts = {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}
    return _limit(np.sort(parts[split]), split, limit)


# ------------------------------------------------------------------------------------------- IDX (MNIST)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not, into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    # Header: two zero bytes, a dtype code, the number of dimensions, then each size as big-endian uint32.
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number); re-download or replace it")
    ndim = data[3]
    offset = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:offset])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    if len(data) - offset != prod(dims) * dtype.itemsize:
        raise ValueError(f"{path} is truncated or has trailing bytes (header says {dims}); re-download it")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


@lru_cache(maxsize=8)
def _load_idx_pair(images_path: str, labels_path: str) -> tuple[Tensor, Tensor]:
    # Cached: train and val are both cut from the same train files, and these are read once per process.
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{images_path} / {labels_path}: expected images (N, H, W) and N labels")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _find_idx(folder: Path, prefix: str) -> tuple[Path, Path] | None:
    """The (images, labels) files of ``prefix`` ('train' or 't10k') in folder, .gz or not."""
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        stem = folder / f"{prefix}-{kind}"
        path = next((p for p in (stem, stem.with_name(stem.name + ".gz")) if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def _idx_dataset(
    tv_name: str,
    pretty: str,
    split: str,
    root: str | Path | None,
    debian: Path | None,
    download: bool,
    image_size: int | None,
    channels: int | None,
    random_flip: bool,
    val_size: int,
    limit: int | None,
    seed: int,
) -> TensorImageDataset:
    _check_split(split)
    prefix = "t10k" if split == "test" else "train"
    # torchvision keeps its downloads in <root>/<ClassName>/raw, so look there too.
    candidates = [Path(root), Path(root) / tv_name / "raw"] if root else []
    if debian is not None and not root:  # an explicit data.root never silently falls back to other files
        candidates.append(debian)
    pair = next((p for p in (_find_idx(c, prefix) for c in candidates) if p is not None), None)
    if pair is None and download:
        import torchvision.datasets

        dl_root = Path(root) if root else DEFAULT_DOWNLOAD_ROOT
        getattr(torchvision.datasets, tv_name)(str(dl_root), train=split != "test", download=True)
        pair = _find_idx(dl_root / tv_name / "raw", prefix)
    if pair is None:
        searched = ", ".join(str(c) for c in candidates) or "nothing (data.root not set)"
        ways = [f"set data.root=/path/to/folder with {prefix}-images-idx3-ubyte(.gz) and its labels"]
        if debian is not None:
            ways.append(
                f"`apt-get install dataset-fashion-mnist` with data.root unset (installs to {debian})"
            )
        ways.append("set data.download=true on a machine with internet")
        raise FileNotFoundError(
            f"{pretty} {split} files not found (searched {searched}); either " + ", or ".join(ways)
        )
    images, labels = _load_idx_pair(str(pair[0]), str(pair[1]))
    if split != "test":
        idx = torch.from_numpy(holdout_indices(len(images), split, val_size, seed, limit))
        images, labels = images[idx], labels[idx]
    return TensorImageDataset(images, labels, 255, image_size, channels, random_flip and split == "train")


def fashion_mnist(
    split: str = "train",
    root: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    random_flip: bool = False,
    val_size: int = 1000,
    limit: int | None = None,
    download: bool = False,
    seed: int = 0,
) -> TensorImageDataset:
    """Fashion-MNIST from ``root``, else Debian's package folder, else a torchvision download (if allowed)."""
    options = dict(image_size=image_size, channels=channels, random_flip=random_flip, val_size=val_size)
    # DEBIAN_FASHION_MNIST is read at call time (not as a default argument) so tests can redirect it.
    debian = DEBIAN_FASHION_MNIST
    return _idx_dataset(
        "FashionMNIST", "Fashion-MNIST", split, root, debian, download, limit=limit, seed=seed, **options
    )


def mnist(
    split: str = "train",
    root: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    random_flip: bool = False,
    val_size: int = 1000,
    limit: int | None = None,
    download: bool = False,
    seed: int = 0,
) -> TensorImageDataset:
    """MNIST from ``root``, else a torchvision download (if allowed)."""
    options = dict(image_size=image_size, channels=channels, random_flip=random_flip, val_size=val_size)
    return _idx_dataset("MNIST", "MNIST", split, root, None, download, limit=limit, seed=seed, **options)


# -------------------------------------------------------------------------------------------- CIFAR-10
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))


def _read_cifar_batches(folder: Path, names: Sequence[str]) -> tuple[Tensor, Tensor]:
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        # b'data' is (N, 3072): 1024 red, then green, then blue values, each row-major 32x32.
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def cifar10(
    split: str = "train",
    root: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    random_flip: bool = False,
    val_size: int = 1000,
    limit: int | None = None,
    download: bool = False,
    seed: int = 0,
) -> TensorImageDataset:
    """CIFAR-10 in its python-pickle format.

    The pickles are read here rather than through torchvision.datasets.CIFAR10, which md5-checks every file
    on load; torchvision is only used to download (when data.download=true).
    """
    _check_split(split)
    names = ("test_batch",) if split == "test" else CIFAR_TRAIN_FILES
    candidates = [Path(root) / CIFAR_FOLDER, Path(root)] if root else []
    folder = next((c for c in candidates if all((c / n).is_file() for n in names)), None)
    if folder is None and download:
        import torchvision.datasets

        dl_root = Path(root) if root else DEFAULT_DOWNLOAD_ROOT
        torchvision.datasets.CIFAR10(str(dl_root), train=split != "test", download=True)
        folder = dl_root / CIFAR_FOLDER
    if folder is None:
        searched = ", ".join(str(c) for c in candidates) or "nothing (data.root not set)"
        raise FileNotFoundError(
            f"CIFAR-10 files {', '.join(names)} not found (searched {searched}); either set "
            f"data.root=/path/to/folder containing {CIFAR_FOLDER}, or set data.download=true on a machine "
            "with internet"
        )
    images, labels = _read_cifar_batches(folder, names)
    if split != "test":
        idx = torch.from_numpy(holdout_indices(len(images), split, val_size, seed, limit))
        images, labels = images[idx], labels[idx]
    return TensorImageDataset(images, labels, 255, image_size, channels, random_flip and split == "train")


# ---------------------------------------------------------------------------------------- image folder
def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def image_folder_classes(root: str | Path) -> list[str]:
    """Sorted names of the class sub-folders of root (hidden folders skipped); [] when there are none."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_image_folder(root: str | Path) -> tuple[list[Path], list[int]]:
    """All image files under root with their labels: the index of their class sub-folder, 0 at top level."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={root} is not a folder; point data.root at a folder of images")
    files = [(p, 0) for p in sorted(root.iterdir()) if _is_image(p)]
    for label, name in enumerate(image_folder_classes(root)):
        files += [(p, label) for p in sorted((root / name).rglob("*")) if _is_image(p)]
    if not files:
        raise FileNotFoundError(
            f"data.root={root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) directly or in sub-folders; "
            "point data.root at a folder of images"
        )
    return [f for f, _ in files], [label for _, label in files]


def image_folder(
    root: str | Path | None,
    split: str = "train",
    image_size: int = 64,
    channels: int = 3,
    random_flip: bool = False,
    val_size: int = 1000,
    limit: int | None = None,
    seed: int = 0,
) -> ImageFileDataset:
    """Any folder of images; class sub-folders (sorted names) give the labels."""
    if not root:
        raise ValueError("data.root is not set; the image_folder dataset needs data.root=/path/to/images")
    files, labels = scan_image_folder(root)
    idx = split_indices(len(files), split, val_size, seed, limit)
    return ImageFileDataset(
        [files[i] for i in idx],
        [labels[i] for i in idx],
        image_size,
        channels,
        random_flip and split == "train",
    )


# ---------------------------------------------------------------------------------------------- digits
def digits(
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    random_flip: bool = False,
    val_size: int = 1000,
    limit: int | None = None,
    seed: int = 0,
) -> TensorImageDataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, values 0..16), bundled with sklearn (offline)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    idx = torch.from_numpy(split_indices(len(images), split, val_size, seed, limit))
    return TensorImageDataset(
        images[idx], labels[idx], 16, image_size, channels, random_flip and split == "train"
    )


# ----------------------------------------------------------------------------------------------- toy 2D
def make_toy2d(kind: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n points (n, 2), centred and scaled to unit standard deviation, and their labels.

    Labels: 0 for swiss_roll, the moon (0/1) for two_moons, the component (0..7) for gaussian_mixture.
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.int64)
    if kind == "swiss_roll":
        t = 1.5 * np.pi * (1 + 2 * rng.random(n))
        points = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + 0.5 * rng.standard_normal((n, 2))
    elif kind == "two_moons":
        labels = rng.integers(0, 2, n)
        t = np.pi * rng.random(n)
        upper = np.stack([np.cos(t), np.sin(t)], axis=1)
        lower = np.stack([1 - np.cos(t), 0.5 - np.sin(t)], axis=1)
        points = np.where(labels[:, None] == 0, upper, lower) + 0.05 * rng.standard_normal((n, 2))
    elif kind == "gaussian_mixture":
        labels = rng.integers(0, 8, n)
        angles = 2 * np.pi * labels / 8
        centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        points = centres + 0.1 * rng.standard_normal((n, 2))
    else:
        raise ValueError(f"unknown toy2d kind {kind!r}; use one of {', '.join(TOY_KINDS)}")
    # One scale for both axes keeps the shape; unit std suits the N(0, I) prior of diffusion.
    points = points - points.mean(axis=0)
    return (points / points.std()).astype(np.float32), labels


def toy2d(
    kind: str,
    split: str = "train",
    n: int = 10000,
    val_size: int = 1000,
    limit: int | None = None,
    seed: int = 0,
) -> PointDataset:
    """A 2-D point cloud of n points in all (split by a fixed permutation)."""
    points, labels = make_toy2d(kind, n, seed)
    idx = split_indices(n, split, val_size, seed, limit)
    return PointDataset(torch.from_numpy(points[idx]), torch.from_numpy(labels[idx]))


swiss_roll = partial(toy2d, "swiss_roll")
two_moons = partial(toy2d, "two_moons")
gaussian_mixture = partial(toy2d, "gaussian_mixture")
