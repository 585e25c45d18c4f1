"""What the sample-quality scores are called, by the feature network they are computed on.

FID, KID and IS are defined on Inception-v3 features. The same formulas on a domain classifier's features give
other quantities, named so that they are never read as (or compared with) Inception numbers. One mapping, used
by ``evaluate``'s tables, the training callback's logged keys, the best-score checkpoint's monitor and the
report's columns (no torch here: the report and config resolvers import it cheaply). Also the keys of the
training loss by timestep decile, which the module logs and the report plots.
"""

from __future__ import annotations

__all__ = [
    "SCORE_KEYS",
    "CLASSIFIER_NAMES",
    "NUM_BUCKETS",
    "bucket_key",
    "features_kind",
    "score_names",
    "quality_monitor",
]

SCORE_KEYS = ("fid", "kid_mean", "kid_std", "precision", "recall", "is_mean", "is_std")

CLASSIFIER_NAMES = {
    "fid": "fd_classifier",
    "kid_mean": "kd_classifier_mean",
    "kid_std": "kd_classifier_std",
    "is_mean": "classifier_score_mean",
    "is_std": "classifier_score_std",
}

NUM_BUCKETS = 10  # the training loss is logged per tenth of the timestep range


def bucket_key(k: int) -> str:
    """The logged key of the mean training loss over timesteps in the ``k``-th of ``NUM_BUCKETS`` equal bins."""
    return f"train_bucket/loss_t{k}"


def features_kind(features: str) -> str:
    """The kind of feature network a ``features`` setting names: ``inception``, else (a classifier file's
    path) ``classifier``."""
    return "inception" if str(features) == "inception" else "classifier"


def score_names(kind: str) -> dict[str, str]:
    """``SampleQuality``'s score keys -> their names in a table, for features of ``kind`` (an extractor's
    ``kind``: ``inception`` keeps fid / kid / is, ``classifier`` gives fd_classifier / kd_classifier_* /
    classifier_score_*)."""
    rename = CLASSIFIER_NAMES if kind == "classifier" else {}
    return {key: rename.get(key, key) for key in SCORE_KEYS}


def quality_monitor(features: str) -> str:
    """The logged key of the training callback's Fréchet distance on ``features`` (``metrics/fid`` or
    ``metrics/fd_classifier``): what a best-score checkpoint monitors."""
    return f"metrics/{score_names(features_kind(features))['fid']}"
