"""The config groups that make up a trained model's spec: a checkpoint stores each of them, and a report names the
class each resolved to. A module of its own so the report reads it without importing torch."""

SPEC_KEYS = (
    "process",
    "schedule",
    "prediction",
    "variance",
    "loss",
    "weighting",
    "timesteps",
    "sampler",
    "model",
)
