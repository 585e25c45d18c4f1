"""FID / KID / precision-recall / IS during training, from the EMA network, on every rank.

Every ``every_n_steps`` (at the start of a validation epoch, when the EMA callback — listed before this
one — has swapped the averaged weights in) each rank generates its share of ``n`` samples; the metric's
states are all-gathered, so every rank computes the same numbers. Pair with a ``ModelCheckpoint`` that
monitors ``metrics/fid`` to keep the best-FID checkpoint (``callbacks=with_metrics`` does).
"""

from __future__ import annotations

import time

import lightning as L
import torch

from ..metrics.evaluation import (
    QualitySettings,
    build_extractor,
    rank_share,
    real_features_for,
    score_generator,
)
from ..metrics.quality import SampleQuality

__all__ = ["SampleQualityCallback"]


class SampleQualityCallback(L.Callback):
    def __init__(
        self,
        every_n_steps: int = 10000,
        n: int = 10000,
        seed: int = 0,
        features: str = "inception",
        inception_weights: str | None = None,
        allow_download: bool = False,
        real_split: str = "train",
        n_real: int = 10000,
        cache_dir: str = ".cache/metrics",
        batch_size: int = 500,
    ):
        self.every_n_steps = every_n_steps
        self.n = n
        self.seed = seed
        self.settings = QualitySettings(
            features=features,
            inception_weights=inception_weights,
            allow_download=allow_download,
            real_split=real_split,
            n_real=n_real,
            cache_dir=cache_dir,
            batch_size=batch_size,
            kid_subset_size=min(1000, n),
        )
        self.metric: SampleQuality | None = None
        self.history: list[dict[str, float]] = []

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.metric is not None:
            return
        extractor = build_extractor(self.settings)
        device = pl_module.device if pl_module.device.type != "meta" else torch.device("cpu")
        datamodule = trainer.datamodule
        # Rank 0 fills the cache first; the others then read it (no duplicated work, no half-read file).
        if trainer.is_global_zero:
            real = real_features_for(datamodule, extractor, self.settings, device)
        trainer.strategy.barrier("real-features")
        if not trainer.is_global_zero:
            real = real_features_for(datamodule, extractor, self.settings, device)
        self.metric = SampleQuality(
            extractor, real, kid_subset_size=self.settings.kid_subset_size, pr_num_samples=self.n
        )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        step = trainer.global_step
        if trainer.sanity_checking or self.metric is None or step == 0 or step % self.every_n_steps:
            return
        started = time.time()
        metric = self.metric.to(pl_module.device)
        num_classes = pl_module.num_classes

        def generate(b: int, gen: torch.Generator) -> torch.Tensor:
            labels = (
                torch.randint(0, num_classes, (b,), generator=gen, device=gen.device) if num_classes else None
            )
            return pl_module.generate(b, batch_size=b, generator=gen, labels=labels, on_device=True)

        n_local = rank_share(self.n, trainer.global_rank, trainer.world_size)
        scores = score_generator(
            metric,
            generate,
            n_local,
            self.settings.batch_size,
            pl_module.device,
            self.seed + trainer.global_rank,
        )
        scores["eval_seconds"] = time.time() - started
        self.history.append({"step": step, **scores})
        for name, value in scores.items():
            pl_module.log(
                f"metrics/{name}", float(value), on_epoch=True, sync_dist=False, rank_zero_only=False
            )
