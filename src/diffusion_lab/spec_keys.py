"""The config groups that make up a trained model's spec: a checkpoint stores each of them, and a report names the
class each resolved to; and what a config or spec trains. A module of its own so the report (and a training
command's early checks) read it without importing torch or Lightning."""

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

# Groups only some processes bring (process=cold's degradation), stored in the spec when the config has them.
OPTIONAL_SPEC_KEYS = ("degradation",)


def task_name(cfg_or_spec) -> str:
    """``diffusion`` or ``autoencoder``: what a config trains (``task.name``) or a checkpoint's spec holds."""
    task = cfg_or_spec.get("task")
    if isinstance(task, str):
        return task
    return str((task or {}).get("name", "diffusion"))
