"""Tests of the data layer: every dataset is built from small files the tests write themselves."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_idx
from diffusion_lab.data import DATASETS, DeviceBatches, DiffusionDataModule, datasets
from diffusion_lab.data.datasets import cifar10, digits, fashion_mnist, image_folder, mnist, read_idx, toy2d

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------------------------- helpers
def make_idx_images(n: int, offset: int = 0) -> np.ndarray:
    """n distinct 28x28 images: pixel (0, 0) holds the item number, the right half is 255 (asymmetric)."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, :, 14:] = 255
    images[:, 0, 0] = np.arange(offset, offset + n)
    return images


@pytest.fixture
def idx_root(tmp_path: Path) -> Path:
    """A Fashion-MNIST-style folder: 20 train items (gzip) and 6 test items (uncompressed)."""
    root = tmp_path / "idx"
    root.mkdir()
    write_idx(root / "train-images-idx3-ubyte.gz", make_idx_images(20))
    write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    write_idx(root / "t10k-images-idx3-ubyte", make_idx_images(6, offset=100))
    write_idx(root / "t10k-labels-idx1-ubyte", np.arange(6) % 10)
    return root


@pytest.fixture
def no_debian(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "no-such-debian-dir")


def ids(dataset) -> list[int]:
    """Item numbers (pixel (0, 0)) of an IDX test dataset, back from [-1, 1] to 0..255."""
    return [round((dataset[i][0][0, 0, 0].item() + 1) * 127.5) for i in range(len(dataset))]


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    """A CIFAR-10 python folder: 5 train batches of 2 images and a test batch of 3 (no md5 to match)."""
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        n = 3 if name == "test_batch" else 2
        images = np.zeros((n, 3, 32, 32), dtype=np.uint8)
        images[:, 0] = 255  # red channel full, green 0, blue 128
        images[:, 2] = 128
        images[:, 1, 0, 0] = np.arange(n) + 10 * b  # item id in the green channel
        batch = {b"data": images.reshape(n, 3072), b"labels": [(b + i) % 10 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    return tmp_path / "cifar"


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """Image folder: cat/ with 3 white images, dog/ with 2 black ones, 2 grey images at top level."""
    root = tmp_path / "images"
    for name, count, value in (("cat", 3, 255), ("dog", 2, 0)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (40, 30), (value,) * 3).save(root / name / f"{i}.png")
    Image.new("L", (20, 20), 128).save(root / "top.jpg")
    Image.new("RGB", (20, 24), (128, 128, 128)).save(root / "top2.bmp")
    (root / "notes.txt").write_text("not an image")
    return root


# ---------------------------------------------------------------------------------------------- IDX
def test_read_idx_round_trip(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    for name in ("a.idx", "b.idx.gz"):
        write_idx(tmp_path / name, array)
        np.testing.assert_array_equal(read_idx(tmp_path / name), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_values_labels_and_splits(idx_root: Path, no_debian) -> None:
    test = fashion_mnist("test", root=idx_root)
    assert len(test) == 6 and ids(test) == list(range(100, 106))
    image, label = test[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert label.dtype == torch.long and label.item() == 3
    assert image[0, 5, 20].item() == 1.0 and image[0, 5, 3].item() == -1.0  # 255 -> 1, 0 -> -1

    train, val = (fashion_mnist(s, root=idx_root, val_size=5) for s in ("train", "val"))
    assert len(train) == 15 and len(val) == 5
    assert set(ids(train)).isdisjoint(ids(val)) and set(ids(train)) | set(ids(val)) == set(range(20))
    assert all(train[i][1].item() == ids(train)[i] % 10 for i in range(len(train)))
    assert ids(fashion_mnist("val", root=idx_root, val_size=5)) == ids(val)  # deterministic
    assert ids(fashion_mnist("val", root=idx_root, val_size=5, seed=1)) != ids(val)
    assert ids(fashion_mnist("train", root=idx_root, val_size=5, limit=4)) == ids(train)[:4]


def test_idx_pad_and_channels(idx_root: Path) -> None:
    padded = fashion_mnist("test", root=idx_root, image_size=32, channels=3)[0][0]
    assert padded.shape == (3, 32, 32)
    assert (padded[:, :2] == -1).all() and (padded[:, :, -2:] == -1).all()  # padding is black
    assert padded[0, 10, 25].item() == 1.0  # content kept, shifted by 2 px
    small = fashion_mnist("test", root=idx_root, image_size=14)[0][0]
    assert small.shape == (1, 14, 14) and small.min() >= -1 and small.max() <= 1


def test_flip_only_on_train(idx_root: Path) -> None:
    torch.manual_seed(0)
    train = fashion_mnist("train", root=idx_root, val_size=5, random_flip=True)
    right_half = {train[0][0][0, 5, 20].item() for _ in range(40)}
    assert right_half == {1.0, -1.0}  # seen both ways round
    for split in ("val", "test"):
        dataset = fashion_mnist(split, root=idx_root, val_size=5, random_flip=True)
        assert {dataset[0][0][0, 5, 20].item() for _ in range(40)} == {1.0}


def test_missing_fashion_mnist_names_three_ways(tmp_path: Path, no_debian) -> None:
    for root in (None, tmp_path / "empty"):
        with pytest.raises(FileNotFoundError) as info:
            fashion_mnist("train", root=root)
        message = str(info.value)
        assert "\n" not in message
        assert "data.root=" in message
        assert "apt-get install dataset-fashion-mnist" in message
        assert "data.download=true" in message and "internet" in message
    with pytest.raises(FileNotFoundError, match="data.download=true") as info:
        mnist("test", root=tmp_path)
    assert "apt-get" not in str(info.value)


def test_debian_folder_is_the_fallback(idx_root: Path, monkeypatch) -> None:
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", idx_root)
    assert len(fashion_mnist("test")) == 6


# -------------------------------------------------------------------------------------------- CIFAR
def test_cifar10_from_pickles(cifar_root: Path) -> None:
    test = cifar10("test", root=cifar_root)
    assert len(test) == 3
    image, label = test[1]
    assert image.shape == (3, 32, 32) and label.item() == 6  # (b=5 + i=1) % 10
    assert (image[0] == 1.0).all() and image[1, 0, 0].item() == pytest.approx(51 / 127.5 - 1, abs=1e-6)
    assert image[1, 1, 1].item() == -1.0 and image[2, 3, 3].item() == pytest.approx(128 / 127.5 - 1, abs=1e-6)
    train, val = (cifar10(s, root=cifar_root / "cifar-10-batches-py", val_size=3) for s in ("train", "val"))
    assert len(train) == 7 and len(val) == 3
    gray = cifar10("test", root=cifar_root, channels=1, image_size=16)[0][0]
    assert gray.shape == (1, 16, 16)
    with pytest.raises(FileNotFoundError, match="data.root="):
        cifar10("train", root=cifar_root / "nope")


# ------------------------------------------------------------------------------------- image folder
def test_image_folder_labels_and_shapes(folder_root: Path) -> None:
    files, labels = datasets.scan_image_folder(folder_root)
    assert [f.name for f in files] == ["top.jpg", "top2.bmp", "0.png", "1.png", "2.png", "0.png", "1.png"]
    assert labels == [0, 0, 0, 0, 0, 1, 1]
    dataset = image_folder(folder_root, "train", image_size=16, channels=3, val_size=0)
    assert len(dataset) == 7  # 10 % test rounds down to 0 for 7 files
    by_label = {}
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert image.shape == (3, 16, 16) and image.min() >= -1 and image.max() <= 1
        by_label.setdefault(label.item(), []).append(image)
    assert all((img == -1).all() for img in by_label[1])  # dog images are black
    assert sum(bool((img == 1).all()) for img in by_label[0]) == 3  # the white cats
    gray = image_folder(folder_root, "train", image_size=8, channels=1, val_size=0)
    assert gray[0][0].shape == (1, 8, 8)


def test_image_folder_errors(tmp_path: Path, folder_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.root=.*missing.*not a folder"):
        image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"data\.root=.*empty.*no images"):
        image_folder(tmp_path / "empty")
    (folder_root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    dataset = image_folder(folder_root, "train", image_size=8, val_size=0)
    broken = [i for i, f in enumerate(dataset.files) if f.name == "broken.png"]
    with pytest.raises(ValueError, match="broken.png") as info:
        dataset[broken[0]]
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------- digits, toy 2D
def test_digits_shapes_and_splits() -> None:
    splits = {s: digits(s, image_size=32, val_size=100) for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in splits.items()} == {"train": 1797 - 179 - 100, "val": 100, "test": 179}
    image, label = splits["train"][0]
    assert image.shape == (1, 32, 32) and 0 <= label.item() <= 9
    assert image.min().item() == -1.0 and image.max().item() <= 1.0
    assert digits("test")[0][0].shape == (1, 8, 8)


@pytest.mark.parametrize("kind", ["swiss_roll", "two_moons", "gaussian_mixture"])
def test_toy2d(kind: str) -> None:
    train = toy2d(kind, "train", n=2000, val_size=100)
    val, test = toy2d(kind, "val", n=2000, val_size=100), toy2d(kind, "test", n=2000, val_size=100)
    assert (len(train), len(val), len(test)) == (1700, 100, 200)
    point, label = train[0]
    assert point.shape == (2,) and point.dtype == torch.float32 and label.dtype == torch.long
    all_points = torch.cat([train.data, val.data, test.data])
    assert 0.8 < all_points.std().item() < 1.2 and all_points.mean(0).abs().max() < 0.1
    assert int(train.labels.max()) < {"swiss_roll": 1, "two_moons": 2, "gaussian_mixture": 8}[kind]
    assert torch.equal(toy2d(kind, "val", n=2000, val_size=100).data, val.data)  # deterministic


# -------------------------------------------------------------------------------------- datamodule
def test_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"data\.name='imagenet'.*fashion_mnist"):
        DiffusionDataModule("imagenet")


def test_shapes_without_setup(folder_root: Path) -> None:
    expected = {
        "fashion_mnist": ((1, 28, 28), 10),
        "mnist": ((1, 28, 28), 10),
        "cifar10": ((3, 32, 32), 10),
        "digits": ((1, 8, 8), 10),
        "image_folder": ((3, 64, 64), None),
        "swiss_roll": ((2,), None),
        "two_moons": ((2,), 2),
        "gaussian_mixture": ((2,), 8),
    }
    assert set(expected) == set(DATASETS)
    for name, (shape, classes) in expected.items():
        dm = DiffusionDataModule(name, root="/nonexistent")
        assert dm.data_shape == shape and dm.num_classes == classes and dm.is_image == (len(shape) == 3)
    dm = DiffusionDataModule("fashion_mnist", image_size=32, channels=3)
    assert dm.data_shape == (3, 32, 32)
    dm = DiffusionDataModule("image_folder", root=str(folder_root), image_size=16, channels=1)
    assert dm.data_shape == (1, 16, 16) and dm.num_classes == 2


def test_datamodule_loaders(idx_root: Path, no_debian) -> None:
    dm = DiffusionDataModule(
        "fashion_mnist", root=str(idx_root), image_size=32, batch_size=4, eval_batch_size=5, val_size=5
    )
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 3  # 15 items, the ragged last batch dropped
    x, y = batches[0]
    assert x.shape == (4, 1, 32, 32) and y.shape == (4,) and y.dtype == torch.long
    assert [len(b[0]) for b in dm.val_dataloader()] == [5]
    assert [len(b[0]) for b in dm.test_dataloader()] == [5, 1]
    real = dm.real_images("test", 4)
    assert real.shape == (4, 1, 32, 32) and real.min() == -1 and real.max() == 1
    assert DiffusionDataModule("fashion_mnist", root=str(idx_root), limit_train=2, val_size=5).real_images(
        "train", 10
    ).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="data.batch_size=64"):
        DiffusionDataModule("fashion_mnist", root=str(idx_root), batch_size=64, val_size=5).train_dataloader()


def test_device_batches_on_cpu(idx_root: Path) -> None:
    torch.manual_seed(0)
    train = fashion_mnist("train", root=idx_root, val_size=5, random_flip=True, image_size=32)
    batches = DeviceBatches(train, batch_size=4, device="cpu")
    assert len(batches) == 3
    seen, flips = [], []
    for _ in range(5):
        for x, y in batches:
            assert x.shape == (4, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
            seen += y.tolist()
            # Unflipped images are white on the right half only; flipped ones on the left half only.
            left, right = x[:, 0, 7, 5], x[:, 0, 7, 26]
            assert torch.equal(left, -right)
            flips += (left == 1.0).tolist()
    assert len(seen) == 60 and set(flips) == {True, False}
    # Without a trainer (or off CUDA) on_gpu falls back to the ordinary loader.
    dm = DiffusionDataModule("two_moons", batch_size=32, on_gpu=True, toy_n=200)
    assert isinstance(dm.train_dataloader(), torch.utils.data.DataLoader)
    points = DeviceBatches(dm.dataset("train"), batch_size=32, device="cpu")
    assert len(points) == 160 // 32 and next(iter(points))[0].shape == (32, 2)


def test_datamodule_in_a_trainer() -> None:
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(2, 2)

        def training_step(self, batch, _):
            return self.net(batch[0]).pow(2).mean()

        def validation_step(self, batch, _):
            self.log("val", self.net(batch[0]).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(
        accelerator="cpu", max_steps=3, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Tiny(), datamodule=DiffusionDataModule("gaussian_mixture", batch_size=16, toy_n=500))
    assert trainer.global_step == 3


# ----------------------------------------------------------------------------------- real Debian set
@pytest.mark.skipif(
    not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist absent"
)
def test_debian_fashion_mnist() -> None:
    train = fashion_mnist("train", val_size=0)
    assert len(train) == 60000
    assert int(train.labels.min()) == 0 and int(train.labels.max()) == 9
    dm = DiffusionDataModule("fashion_mnist")
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 60000 and len(dm.dataset("test")) == 10000
    image, _ = dm.dataset("test")[0]
    assert image.shape == (1, 28, 28) and image.min() >= -1 and image.max() <= 1
