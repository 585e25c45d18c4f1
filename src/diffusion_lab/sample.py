"""Sample from a trained checkpoint.

    python -m diffusion_lab.sample ckpt_path=outputs/<task_name>/runs/<time>/checkpoints/last.ckpt n=64 sampler=ddim steps=50 eta=0

Everything about the diffusion process (schedule, parameterization, variance, network) is rebuilt from the
spec stored in the checkpoint; only the sampler and its step count can be chosen here. Writes a PNG grid and
an .npz of uint8 NHWC samples and prints where they are.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from .cli import checkpoint_argument, command
from .errors import UserError, check_types
from .overrides import override_key

__all__ = ["sample", "check_eta", "fixed_by_checkpoint", "main"]

DIFFUSION_KEYS = (
    "process",
    "degradation",
    "schedule",
    "prediction",
    "variance",
    "model",
    "loss",
    "weighting",
    "timesteps",
)


def fixed_by_checkpoint(key: str) -> str | None:
    """The message for an override of a part the checkpoint fixes (None for any other key)."""
    top = override_key(key).split(".")[0]
    if top not in DIFFUSION_KEYS:
        return None
    return f"{top} is fixed by the checkpoint and cannot be overridden when sampling; drop '{top}='"


def check_eta(eta: float | None) -> None:
    """``eta`` (sample's and evaluate's, DDIM's η) refused below 0 under its own name, before any work."""
    if eta is not None and eta < 0:
        raise UserError(f"eta={eta} is invalid: η must be >= 0 (0 deterministic, 1 DDPM-like)")


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Draw ``n`` samples from the checkpoint's EMA network; writes a .npz (and a PNG grid for images). The
    options are checked first; the run (:func:`diffusion_lab.sampling.sample`: torch, the networks) loads after."""
    for key in DIFFUSION_KEYS:
        if key in cfg:
            raise UserError(fixed_by_checkpoint(key))
    check_types(
        cfg,
        {"n": (int,), "batch_size": (int,), "seed": (int,), "guidance": (float,), "eta": (float, None)},
    )
    check_eta(cfg.eta)
    for key in ("n", "batch_size"):
        if int(cfg[key]) < 1:
            raise UserError(f"{key}={cfg[key]} is invalid: it must be an integer >= 1")
    checkpoint_argument(cfg, required=True)  # stored as cfg.ckpt_path
    from .sampling import sample as draw_samples

    return draw_samples(cfg)


@command("sample", usage=__doc__, unknown_key=fixed_by_checkpoint)
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
