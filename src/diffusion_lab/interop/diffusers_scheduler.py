"""Our schedule, parameterization, reverse variance and clipping <-> a diffusers ``DDPMScheduler`` config.

    ours                                    DDPMScheduler config
    schedule.num_timesteps = T              num_train_timesteps = T
    linear (β from β_1 to β_T)              beta_schedule "linear", beta_start = β_1, beta_end = β_T (our β range is
                                            given for T = 1000 and scaled by 1000 / T: the scaled ends are written)
    quadratic (√β linear)                   beta_schedule "scaled_linear"
    cosine (s = 0.008, max_beta = 0.999)    beta_schedule "squaredcos_cap_v2"
    any other schedule                      trained_betas: our β table
    prediction eps / v / x0                 prediction_type "epsilon" / "v_prediction" / "sample"
    variance fixed_small / fixed_large /    variance_type "fixed_small" / "fixed_large" / "learned_range"
      learned_range                         (the same σ² at every step that adds noise: all but the last)
    sampler.clip_denoised                   clip_sample, clip_sample_range = 1

diffusers keeps its tables in float32 (ours are float64, rounded once), so the β agree to float32 rounding.
``variance=learned`` (the network outputs log σ²) has no counterpart: diffusers' "learned" reads σ² itself.
"""

from __future__ import annotations

from typing import Any

from ..diffusion import CosineSchedule, LinearSchedule, NoiseSchedule, QuadraticSchedule
from ..diffusion.process import Diffusion
from ..errors import UserError

__all__ = ["PREDICTION_TYPES", "VARIANCE_TYPES", "scheduler_config", "spec_parts_from_scheduler"]

PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
VARIANCE_TYPES = {
    "fixed_small": "fixed_small",
    "fixed_large": "fixed_large",
    "learned_range": "learned_range",
}

# The DDPMScheduler settings every export writes (those diffusion_lab has no counterpart for, at their off value).
_PLAIN = {
    "clip_sample_range": 1.0,
    "thresholding": False,
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}


# ------------------------------------------------------------------------------------------ ours -> theirs
def _betas_fields(schedule: NoiseSchedule, schedule_spec: dict) -> dict[str, Any]:
    betas = schedule.betas
    ends = {"beta_start": float(betas[0]), "beta_end": float(betas[-1])}
    if type(schedule) is LinearSchedule:
        return {"beta_schedule": "linear", **ends}
    if type(schedule) is QuadraticSchedule:
        return {"beta_schedule": "scaled_linear", **ends}
    default_cosine = schedule_spec.get("s", 0.008) == 0.008 and schedule_spec.get("max_beta", 0.999) == 0.999
    if type(schedule) is CosineSchedule and default_cosine:
        return {"beta_schedule": "squaredcos_cap_v2"}
    return {"beta_schedule": "linear", **ends, "trained_betas": betas.tolist()}


_LEARNED_DIFFERS = " (diffusers' 'learned' reads the network's output as σ², ours as log σ²)"


def _diffusers_value(group: str, name: str, table: dict[str, str], field: str, why: str = "") -> str:
    """Our option ``group=name`` as the diffusers ``field`` value, or a one-line refusal naming what it takes."""
    if name not in table:
        raise UserError(
            f"{group}={name} has no diffusers {field}{why}; format=diffusers exports {group}={'|'.join(table)}"
        )
    return table[name]


def scheduler_config(diffusion: Diffusion, schedule_spec: dict, clip_denoised: bool) -> dict[str, Any]:
    """The ``DDPMScheduler(**config)`` of a trained process (UserError for what diffusers cannot express)."""
    return {
        "num_train_timesteps": diffusion.num_timesteps,
        **_betas_fields(diffusion.schedule, schedule_spec),
        "prediction_type": _diffusers_value(
            "prediction", diffusion.prediction.name, PREDICTION_TYPES, "prediction_type"
        ),
        "variance_type": _diffusers_value(
            "variance", diffusion.variance.name, VARIANCE_TYPES, "variance_type", _LEARNED_DIFFERS
        ),
        "clip_sample": bool(clip_denoised),
        **_PLAIN,
    }


# ------------------------------------------------------------------------------------------ theirs -> ours
def _schedule_spec(config: dict, betas: list[float]) -> dict[str, Any]:
    """Our schedule node: the named schedule where it is diffusers' one, else the β table itself."""
    T = config["num_train_timesteps"]
    named = config.get("trained_betas") is None and not config.get("rescale_betas_zero_snr")
    # our linear / quadratic β ends are given for T = 1000 (scaled by 1000 / T)
    ends = {"beta_start": config["beta_start"] * T / 1000, "beta_end": config["beta_end"] * T / 1000}
    kind = config.get("beta_schedule")
    if named and kind == "linear" and config["beta_end"] <= 0.999:
        return {"_target_": "diffusion_lab.diffusion.LinearSchedule", "num_timesteps": T, **ends}
    if named and kind == "scaled_linear" and config["beta_end"] <= 0.999:
        return {"_target_": "diffusion_lab.diffusion.QuadraticSchedule", "num_timesteps": T, **ends}
    if named and kind == "squaredcos_cap_v2":
        return {"_target_": "diffusion_lab.diffusion.CosineSchedule", "num_timesteps": T}
    if max(betas) >= 1.0:
        raise UserError(
            "scheduler/scheduler_config.json gives β = 1 at the last step (rescale_betas_zero_snr): "
            "diffusion_lab's schedules need every β < 1"
        )
    return {"_target_": "diffusion_lab.diffusion.NoiseSchedule", "betas": betas}


def _read_choice(config: dict, key: str, table: dict[str, str]) -> str:
    value = config.get(key)
    ours = {theirs: name for name, theirs in table.items()}
    if value not in ours:
        raise UserError(
            f"scheduler/scheduler_config.json has {key}={value!r}; diffusion_lab reads {sorted(ours)}"
        )
    return ours[value]


def _clipping(config: dict) -> bool:
    if config.get("thresholding"):
        raise UserError(
            "scheduler/scheduler_config.json has thresholding=true (dynamic thresholding); diffusion_lab's "
            "samplers clip x̂_0 to [-1, 1] or not at all"
        )
    clip = bool(config.get("clip_sample", True))
    if clip and config.get("clip_sample_range", 1.0) != 1.0:
        raise UserError(
            f"scheduler/scheduler_config.json has clip_sample_range={config['clip_sample_range']}; "
            "diffusion_lab's samplers clip x̂_0 to [-1, 1]"
        )
    return clip


def spec_parts_from_scheduler(config: dict, betas: list[float]) -> dict[str, Any]:
    """From a complete DDPMScheduler config (and its β table): our schedule node, the prediction and variance
    option names, and whether the sampler clips x̂_0."""
    return {
        "schedule": _schedule_spec(config, betas),
        "prediction": _read_choice(config, "prediction_type", PREDICTION_TYPES),
        "variance": _read_choice(config, "variance_type", VARIANCE_TYPES),
        "clip_denoised": _clipping(config),
    }
