"""The Lightning datamodule: one entry point (``data.name``) for every dataset of ``datasets.py``."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffusion_lab.data import datasets as ds

IDX_DATASETS = ("fashion_mnist", "mnist", "cifar10")
DATASETS = (*IDX_DATASETS, "image_folder", "digits", *ds.TOY_KINDS)

# Native (channels, size) of each image dataset, so shapes are known before any data is read.
_NATIVE = {"fashion_mnist": (1, 28), "mnist": (1, 28), "cifar10": (3, 32), "digits": (1, 8)}
# image_folder has no native size: its images are resized to this unless data.image_size is set.
IMAGE_FOLDER_DEFAULTS = (3, 64)
_NUM_CLASSES = {"fashion_mnist": 10, "mnist": 10, "cifar10": 10, "digits": 10, "two_moons": 2,
                "gaussian_mixture": 8, "swiss_roll": None}  # fmt: skip


class ResumableOrder:
    """What makes a training loader resumable mid-epoch (Lightning saves its ``state_dict`` in each checkpoint).

    Each ``iter()`` starts the next epoch ``e``, shuffled by a generator seeded ``order_seed + e``: the order
    depends on nothing else that drew random numbers. After ``load_state_dict`` the next ``iter()`` continues the
    checkpointed epoch without the batches already trained (none left: Lightning goes on to the next epoch). That
    count is the Trainer's (``trained``): Lightning restores it in its loop progress and expects a resumable loader
    to yield the rest of the epoch (the loader itself runs a batch ahead of training: Lightning's prefetch).
    """

    order_seed: int
    trained: Callable[[], int] | None
    epoch: int = -1  # the epoch of the latest iter()
    _restored: bool = False

    def state_dict(self) -> dict[str, Any]:
        return {"order_seed": self.order_seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order_seed, self.epoch = int(state["order_seed"]), int(state["epoch"])
        self._restored = True

    def _start_epoch(self) -> tuple[int, int]:
        """(seed of this epoch's order, batches to leave out) for the epoch an ``iter()`` starts."""
        skip = 0
        if self._restored and self.epoch >= 0:
            skip = self.trained() if self.trained is not None else 0
        else:
            self.epoch += 1
        self._restored = False
        return self.order_seed + self.epoch, skip


class ResumableLoader(ResumableOrder, DataLoader):
    """The CPU training loader (a shuffling ``DataLoader``), resumable: see ``ResumableOrder``. The batches left
    out after a restore are skipped as index lists, never loaded."""

    def __init__(self, *args, order_seed: int = 0, trained: Callable[[], int] | None = None, **kwargs):
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(*args, **kwargs)
        self.order_seed = order_seed
        self.trained = trained
        self._skip = 0

    @property
    def _index_sampler(self):
        batches = super()._index_sampler
        return _After(batches, self._skip) if self._skip else batches

    def __iter__(self):
        seed, self._skip = self._start_epoch()
        self.generator.manual_seed(seed)  # the sampler's (and the workers' base seed) for this epoch
        try:
            return super().__iter__()
        finally:
            self._skip = 0


class _After:
    """The batches (index lists) of a batch sampler after the first ``skip``."""

    def __init__(self, batches, skip: int):
        self.batches, self.skip = batches, skip

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.skip)


class DeviceBatches(ResumableOrder):
    """Shuffled batches drawn on the accelerator from a training set held there as one tensor.

    For small datasets the CPU data loader (indexing, collation, host-to-device copies) is slower than the
    model; here an epoch is one ``randperm`` on the device plus gathers. Like the train loader, the last
    incomplete batch is dropped; like it, it resumes mid-epoch (``ResumableOrder``).
    """

    def __init__(
        self,
        dataset: ds.TensorImageDataset | ds.PointDataset | ds.EncodedDataset,
        batch_size: int,
        device,
        order_seed: int = 0,
        trained: Callable[[], int] | None = None,
    ) -> None:
        self.dataset = dataset
        self.data = dataset.data.to(device)  # still integer for images: converted per batch
        self.labels = dataset.labels.to(device)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.order_seed = order_seed
        self.trained = trained

    def __len__(self) -> int:
        return len(self.data) // self.batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        seed, skip = self._start_epoch()
        generator = torch.Generator(device=self.device).manual_seed(seed)
        perm = torch.randperm(len(self.data), device=self.device, generator=generator)
        for b in range(skip, len(self)):
            idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.dataset.transform(self.data[idx], augment=True), self.labels[idx]


class DiffusionDataModule(L.LightningDataModule):
    """Builds train/val/test sets of ``name`` and their loaders (see the module docstring of datasets.py).

    A dataset of one's own: subclass, set ``NAMES`` to its name(s), override ``build`` (and ``data_shape``,
    ``num_classes``, ``is_image``), and point a conf/data/<name>.yaml's ``_target_`` at the subclass."""

    NAMES: tuple[str, ...] = DATASETS  # the ``name`` values this class builds

    def __init__(
        self,
        name: str,
        root: str | None = None,
        image_size: int | None = None,
        channels: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        random_flip: bool = False,
        val_size: int = 1000,
        limit_train: int | None = None,
        download: bool = False,
        on_gpu: bool = False,
        toy_n: int = 10000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if name not in self.NAMES:
            raise ValueError(
                f"data.name={name!r} is not a known dataset; use one of: {', '.join(self.NAMES)}"
            )
        if channels is not None and channels not in (1, 3):
            raise ValueError(
                f"data.channels={channels} is not supported; use 1, 3 or null (the dataset's own)"
            )
        if image_size is not None and image_size < 1:
            raise ValueError(f"data.image_size={image_size} must be a positive integer or null (native size)")
        for option, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size),
                              ("limit_train", limit_train), ("toy_n", toy_n)):  # fmt: skip
            if value is not None and value < 1:
                raise ValueError(f"data.{option}={value} must be a positive integer")
        if val_size < 0:
            raise ValueError(f"data.val_size={val_size} must be >= 0")
        # Kept as self.hparams but not sent to the loggers: they record the run's whole config (train.py), and
        # Lightning would merge these arguments on top of it (``seed`` here is the split seed, not the run's).
        self.save_hyperparameters(logger=False)
        self.name = name
        self.root = root or None  # "" from a config means "not set"
        self.image_size = image_size
        self.channels = channels
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.random_flip = random_flip
        self.val_size = val_size
        self.limit_train = limit_train
        self.download = download
        self.on_gpu = on_gpu
        self.toy_n = toy_n
        self.seed = seed
        self._datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ shape info, without loading data
    @property
    def is_image(self) -> bool:
        return self.name not in ds.TOY_KINDS

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) for images, (2,) for the toy point clouds."""
        if not self.is_image:
            return (2,)
        channels, size = _NATIVE.get(self.name, IMAGE_FOLDER_DEFAULTS)
        size = self.image_size or size
        return (self.channels or channels, size, size)

    @property
    def num_classes(self) -> int | None:
        """Number of labels, or None for unlabelled data (image_folder: its class sub-folders, if any)."""
        if self.name == "image_folder":
            return (len(ds.image_folder_classes(self.root)) or None) if self.root else None
        return _NUM_CLASSES[self.name]

    # ------------------------------------------------------------------------------------------ datasets
    def build(self, split: str) -> Dataset:
        """Build (uncached) the dataset of one split."""
        flip = self.random_flip and split == "train"
        common = dict(split=split, val_size=self.val_size, limit=self.limit_train, seed=self.seed)
        if self.name in ds.TOY_KINDS:
            return ds.toy2d(self.name, n=self.toy_n, **common)
        if self.name == "image_folder":
            channels, size = self.data_shape[0], self.data_shape[1]
            return ds.image_folder(self.root, image_size=size, channels=channels, random_flip=flip, **common)
        image = dict(image_size=self.image_size, channels=self.channels, random_flip=flip)
        if self.name == "digits":
            return ds.digits(**image, **common)
        builder = {"fashion_mnist": ds.fashion_mnist, "mnist": ds.mnist, "cifar10": ds.cifar10}[self.name]
        return builder(root=self.root, download=self.download, **image, **common)

    def dataset(self, split: str) -> Dataset:
        """The dataset of a split, built on first use."""
        if split not in self._datasets:
            self._datasets[split] = self.build(split)
        return self._datasets[split]

    def prepare_data(self) -> None:
        # Runs on one process only: the place for downloads, before setup() reads the files everywhere.
        if self.download and self.name in IDX_DATASETS:
            self.dataset("test")

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}
        for split in splits.get(stage, ds.SPLITS) if stage else ds.SPLITS:
            self.dataset(split)

    # --------------------------------------------------------------------------------------- dataloaders
    def _device_for_batches(self) -> torch.device | None:
        """The CUDA device to hold the training set on, or None to use a CPU data loader."""
        if not self.on_gpu or self.trainer is None:
            return None
        device = self.trainer.strategy.root_device
        return device if device.type == "cuda" else None

    def train_dataloader(self):
        train = self.dataset("train")
        if len(train) < self.batch_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} is larger than the training set ({len(train)} items) and "
                "the last incomplete batch is dropped; lower data.batch_size or raise data.limit_train"
            )
        device = self._device_for_batches()
        # The order of epoch e is seeded seed + e (the run's seed: seed_everything set the initial seed).
        order = dict(order_seed=torch.initial_seed(), trained=self._batches_trained if self.trainer else None)
        # Image folders are decoded lazily from disk, so they always go through the CPU loader.
        if device is not None and isinstance(
            train, ds.TensorImageDataset | ds.PointDataset | ds.EncodedDataset
        ):
            return DeviceBatches(train, self.batch_size, device, **order)
        return self._loader(train, self.batch_size, shuffle=True, **order)

    def _batches_trained(self) -> int:
        """Batches of the current epoch the Trainer has taken (restored by Lightning on a resume)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.eval_batch_size, shuffle=False)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, **order) -> DataLoader:
        return (ResumableLoader if shuffle else DataLoader)(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle,  # only training drops the ragged last batch, evaluation sees every item
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            **order,
        )

    # ---------------------------------------------------------------------------------------------- misc
    def real_images(self, split: str, n: int) -> Tensor:
        """The first n (at most) samples of a split, (B, C, H, W) in [-1, 1] (points (B, 2) for toy sets).

        Never augmented, so metric reference statistics are reproducible.
        """
        if split not in ds.SPLITS:
            raise ValueError(f"split must be one of {', '.join(ds.SPLITS)}; got {split!r}")
        return self.dataset(split).images(n)
