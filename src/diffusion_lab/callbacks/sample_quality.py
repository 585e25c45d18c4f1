"""FID / KID / precision-recall / IS during training, from the EMA network, on every rank.

The scores are logged under their names for the feature network (``metrics.evaluation.score_names``):
``metrics/fid``, ``metrics/kid_mean``, ``metrics/is_mean`` on Inception features; ``metrics/fd_classifier``,
``metrics/kd_classifier_mean``, ``metrics/classifier_score_mean`` on a domain classifier's (``features=PATH``).
Precision and recall keep their names. (Metrics files written before this naming hold ``metrics/fid`` whatever
the features; the report notes such a run.)

At the start of a validation epoch (when the EMA callback — listed before this one — has swapped the averaged
weights in) the ranks generate the ``n`` samples between them; the metric's states are all-gathered, so every
rank computes the same numbers. The samples are cut into fixed, separately seeded batches (see
``metrics.evaluation.rank_batches``), so they — and the scores — do not depend on the number of processes.

When: at the first validation of a run (so that a ``ModelCheckpoint`` monitoring the Fréchet distance finds
the key at every validation: Lightning refuses a monitor that is missing after validation has run), then at
the first validation at or after each multiple of ``every_n_steps``. Pair with a ``ModelCheckpoint`` that
monitors it to keep the best-score checkpoint (``callbacks=with_metrics`` does, its monitor resolved from the
features by ``${dl.quality_monitor:...}``).
"""

from __future__ import annotations

import time

import lightning as L
import torch

from ..metrics.evaluation import (
    QualitySettings,
    build_extractor,
    real_features_for,
    score_generator,
    score_names,
)
from ..metrics.quality import SampleQuality

__all__ = ["SampleQualityCallback"]

OPTION_PREFIX = "callbacks.sample_quality."


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
        for option, value, least in (
            ("every_n_steps", every_n_steps, 1),
            ("n", n, 2),
            ("n_real", n_real, 2),
            ("batch_size", batch_size, 1),
        ):
            if not isinstance(value, int) or value < least:
                raise ValueError(
                    f"{OPTION_PREFIX}{option}={value!r} is invalid: it must be an integer >= {least}"
                )
        self.every_n_steps = every_n_steps
        self.n = n
        self.seed = seed
        self.settings = QualitySettings(
            features=str(features),
            inception_weights=inception_weights,
            allow_download=allow_download,
            real_split=real_split,
            n_real=n_real,
            cache_dir=cache_dir,
            batch_size=batch_size,
            kid_subset_size=min(1000, n, n_real),
            option_prefix=OPTION_PREFIX,
        )
        self.metric: SampleQuality | None = None
        self.names: dict[str, str] = {}  # score key -> its logged name on these features
        self.history: list[dict[str, float]] = []
        self._last_step: int | None = None  # global step of the last computation in this run

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.metric is not None:
            return
        extractor = build_extractor(self.settings)
        self.names = score_names(extractor.kind)
        # The module is not on its device yet when callbacks are set up; the strategy knows where it will be
        # (extracting the real features on the CPU of a GPU job would be very slow).
        device = trainer.strategy.root_device
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

    def due(self, step: int) -> bool:
        """Whether a validation at global step ``step`` computes the metrics."""
        if step <= 0:
            return False
        if self._last_step is None:
            return True
        return step // self.every_n_steps > self._last_step // self.every_n_steps

    def score(self, pl_module, rank: int = 0, world_size: int = 1) -> dict[str, float]:
        """This rank's share of the ``n`` samples from ``pl_module.generate``, scored over all ranks."""
        if self.metric is None:
            raise RuntimeError("SampleQualityCallback.score before setup()")
        device = pl_module.device
        metric = self.metric.to(device)
        num_classes = pl_module.num_classes

        def generate(b: int, gen: torch.Generator) -> torch.Tensor:
            labels = (
                torch.randint(0, num_classes, (b,), generator=gen, device=gen.device) if num_classes else None
            )
            return pl_module.generate(b, batch_size=b, generator=gen, labels=labels, on_device=True)

        return score_generator(
            metric,
            generate,
            self.n,
            self.settings.batch_size,
            device,
            self.seed,
            rank=rank,
            world_size=world_size,
        )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        step = trainer.global_step
        if trainer.sanity_checking or self.metric is None or not self.due(step):
            return
        started = time.time()
        scores = self.score(pl_module, trainer.global_rank, trainer.world_size)
        scores["eval_seconds"] = time.time() - started
        scores = {self.names.get(key, key): value for key, value in scores.items()}
        self._last_step = step
        self.history.append({"step": step, **scores})
        for name, value in scores.items():
            pl_module.log(
                f"metrics/{name}", float(value), on_epoch=True, sync_dist=False, rank_zero_only=False
            )

    def teardown(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        self._last_step = None
