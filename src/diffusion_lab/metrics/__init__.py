"""Sample-quality metrics: FID / KID / precision-recall / IS with Inception or domain-classifier features."""

from __future__ import annotations

from diffusion_lab.metrics.classifier import (
    SmallClassifier,
    evaluate_accuracy,
    load_classifier,
    save_classifier,
    train_classifier,
)
from diffusion_lab.metrics.feature_nets import (
    INCEPTION_URL,
    ClassifierFeatures,
    FeatureExtractor,
    InceptionFeatures,
    build_feature_extractor,
    extract_features,
    images_to_uint8,
    inception_weights_cache_path,
    resolve_inception_weights,
)
from diffusion_lab.metrics.quality import (
    SampleQuality,
    feature_stats,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
    real_features_cache_path,
    real_features_cached,
)

__all__ = [
    "INCEPTION_URL",
    "ClassifierFeatures",
    "FeatureExtractor",
    "InceptionFeatures",
    "SampleQuality",
    "SmallClassifier",
    "build_feature_extractor",
    "evaluate_accuracy",
    "extract_features",
    "feature_stats",
    "frechet_distance",
    "images_to_uint8",
    "inception_score",
    "inception_weights_cache_path",
    "kernel_inception_distance",
    "load_classifier",
    "precision_recall",
    "real_features_cache_path",
    "real_features_cached",
    "resolve_inception_weights",
    "save_classifier",
    "train_classifier",
]
