"""A training config's values that no part checks itself: their types, their ranges, an experiment's required
option. Pure config (no torch, no Lightning), so ``train`` refuses a wrong one in about a second, before the
heavy imports; ``training.check_config`` runs them again with the options whose allowed values live with
Lightning-side code (``nonfinite``, ``checkpoint_writes``, ``compile_scope``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import UserError, check_types

__all__ = ["AUTOENCODER_REQUIRED", "TYPED_KEYS", "VALUE_RANGES", "check_ranges", "check_values"]


def check_values(cfg: DictConfig) -> None:
    """The types (``TYPED_KEYS``), the ranges (``VALUE_RANGES``) and the latent experiment's required
    ``autoencoder=``: one line naming the key, before any work."""
    check_types(cfg, TYPED_KEYS)
    check_ranges(cfg)
    if cfg.get("autoencoder") == AUTOENCODER_REQUIRED:
        raise UserError(
            "autoencoder= is required by this experiment: pass autoencoder=<run directory of "
            "experiment=autoencoder_fmnist>/checkpoints/last.ckpt (a task=autoencoder checkpoint)"
        )


# Values checked at start-up: a wrong type (trainer.max_steps=abc) otherwise fails deep inside a library with a
# traceback. A tuple of accepted types; None means null is allowed.
TYPED_KEYS: dict[str, tuple] = {
    "seed": (int,),
    "trainer.max_steps": (int,),
    "trainer.max_epochs": (int, None),
    "trainer.log_every_n_steps": (int,),
    "trainer.val_check_interval": (int, float, None),
    "trainer.limit_val_batches": (int, float),
    "trainer.gradient_clip_val": (float, None),
    "trainer.deterministic": (bool, str),
    "schedule.num_timesteps": (int,),
    "optimizer.lr": (float,),
    "optimizer.weight_decay": (float,),
    "data.batch_size": (int,),
    "data.eval_batch_size": (int,),
    "data.num_workers": (int,),
    "data.limit_train": (int, None),
    "data.val_size": (int,),
    "callbacks.ema.decay": (float,),
    "callbacks.ema.update_every_n_steps": (int,),
    "sampler.clip_denoised": (bool,),
    "callbacks.checkpoint.every_n_train_steps": (int, None),
    "callbacks.preemption.interrupt": (bool,),
    "final_samples": (int,),
    "p_uncond": (float,),
    "progress_refresh_rate": (int,),
    "nonfinite": (str,),
    "autoencoder": (str, None),
}


def _is_duration(value: Any) -> bool:
    """``trainer.max_time`` as Lightning reads it from a config: "DD:HH:MM:SS" (its mapping form arrives as a
    DictConfig, which Lightning's Timer does not take)."""
    return isinstance(value, str) and re.fullmatch(r"\d+:\d+:\d+:\d+", value) is not None


# Values of the right type but out of range, which no part checks itself: (key, test, what is allowed); null is
# not tested. Unchecked, they fail late inside Lightning (val_check_interval=0 after the first step) or train
# nonsense silently (lr=0 never moves; a negative gradient_clip_val flips the gradients).
VALUE_RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("seed", lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    ("trainer.max_steps", lambda v: v >= 1 or v == -1, "an integer >= 1, or -1 (no limit)"),
    ("trainer.max_epochs", lambda v: v >= 1 or v == -1, "an integer >= 1, -1 or null (no limit)"),
    ("trainer.log_every_n_steps", lambda v: v >= 1, "an integer >= 1"),
    ("callbacks.ema.update_every_n_steps", lambda v: v >= 1, "an integer >= 1 (1: every step)"),
    ("trainer.val_check_interval", lambda v: v > 0, "> 0 (steps, or a fraction of an epoch), or null"),
    ("trainer.gradient_clip_val", lambda v: v >= 0, ">= 0 (0 or null: no clipping)"),
    ("optimizer.lr", lambda v: v > 0, "a number > 0"),
    ("p_uncond", lambda v: 0 <= v < 1, "in [0, 1) (the share of labels dropped for guidance)"),
    ("final_samples", lambda v: v >= 0, "an integer >= 0 (0: none)"),
    ("trainer.max_time", _is_duration, "a duration DD:HH:MM:SS (e.g. 00:04:00:00: four hours), or null"),
)


def check_ranges(cfg: DictConfig) -> None:
    """One line naming the key, its value and what is allowed, for the first value of ``VALUE_RANGES`` out of
    range (after ``check_types``, so each value is a number)."""
    for key, ok, allowed in VALUE_RANGES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not ok(value):
            raise UserError(f"{key}={value!r} is out of range; it must be {allowed}")


# The value of ``autoencoder`` in an experiment that only makes sense in a latent space (fmnist_latent).
AUTOENCODER_REQUIRED = "required"
