"""Train the domain feature network for a dataset and report its test accuracy.

python -m diffusion_lab.features data=fashion_mnist        # -> .cache/features/fashion_mnist_classifier.pt
python -m diffusion_lab.evaluate ckpt=... features=.cache/features/fashion_mnist_classifier.pt
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from .cli import command
from .errors import UserError, check_types, require_writable

if TYPE_CHECKING:
    import torch

__all__ = ["train_features", "main"]


def train_features(cfg: DictConfig) -> dict:
    check_types(
        cfg, {"epochs": (int,), "batch_size": (int,), "lr": (float,), "width": (int,), "seed": (int,)}
    )
    # torch, the data and the classifier load once the options have passed: a mistyped one is refused at once.
    from hydra.utils import instantiate

    from .metrics.classifier import save_classifier, train_classifier
    from .sampling import resolve_device

    started = time.time()
    device = resolve_device(str(cfg.device))
    data_cfg = dict(cfg.data)
    data_cfg["on_gpu"] = False
    datamodule = instantiate(data_cfg)
    if not datamodule.is_image or not datamodule.num_classes:
        raise UserError(
            f"data={datamodule.name} has no labelled images; the feature network needs class labels"
        )
    out = _output_path(cfg, datamodule.name)  # refused before the training, not after it
    datamodule.setup("fit")
    train_ds, test_ds = datamodule.dataset("train"), datamodule.dataset("test")
    x_train, y_train = _all(train_ds)
    x_test, y_test = _all(test_ds)
    model, acc = train_classifier(
        x_train,
        y_train,
        x_test,
        y_test,
        epochs=int(cfg.epochs),
        batch_size=int(cfg.batch_size),
        device=device,
        num_classes=datamodule.num_classes,
        lr=float(cfg.lr),
        width=int(cfg.width),
        augment=bool(cfg.augment),
        seed=int(cfg.seed),
        verbose=True,
        progress=None,  # a bar on a terminal
    )
    meta = {"dataset": datamodule.name, "test_accuracy": acc, "data_shape": list(datamodule.data_shape)}
    save_classifier(model, out, meta)
    print(
        f"\n== diffusion_lab.features done ==\ndataset       : {datamodule.name}\ntest accuracy : {acc:.4f}\n"
        f"classifier    : {out}\nuse it with   : python -m diffusion_lab.evaluate ckpt=... features={out}\n"
        f"time          : {time.time() - started:.1f} s on {device}",
        flush=True,
    )
    return {"path": str(out), "test_accuracy": acc}


def _output_path(cfg: DictConfig, dataset: str) -> Path:
    """The classifier file to write (``out``, else the cache's), or a one-line refusal if it cannot be written."""
    out = Path(cfg.out) if cfg.out else Path(cfg.paths.cache_dir) / "features" / f"{dataset}_classifier.pt"
    if out.is_dir():
        raise UserError(
            f"out={str(out)!r} is a folder; name the classifier file to write (e.g. {out}/clf.pt)"
        )
    require_writable("out", str(out), out.parent)
    return out


def _all(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    loader = torch.utils.data.DataLoader(dataset, batch_size=4096, shuffle=False)
    xs, ys = zip(*[(x, y) for x, y in loader])
    return torch.cat(xs), torch.cat(ys)


@command("features", usage=__doc__)
def main(cfg: DictConfig) -> None:
    train_features(cfg)


if __name__ == "__main__":
    main()
