"""``Diffusion``: the schedule, the parameterization and the reverse variance, composed once.

It owns no network. ``denoise`` reads a network's raw output at (x_t, t) as the reverse step
p_θ(x_{t-1} | x_t) = N(μ_θ, σ_t²): the predicted x_0 and ε, the posterior mean μ_θ = μ̃(x̂_0, x_t) and log σ_t².
Losses, samplers and the likelihood all go through it, so a choice made here holds everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .gaussian import q_posterior, q_sample
from .parameterizations import Parameterization, build_prediction, eps_from_x0
from .process_base import Process
from .schedules import NoiseSchedule, build_schedule
from .variances import ReverseVariance, build_variance

__all__ = ["Diffusion", "DenoiserOutput", "ModelFn", "parse_respacing"]

ModelFn = Callable[[Tensor, Tensor], Tensor]
"""A network as the diffusion code sees it: ``model(x_t, t) -> raw output`` with t in the schedule's indices."""


@dataclass
class DenoiserOutput:
    mean: Tensor  # μ_θ(x_t, t), (B, C, ...)
    log_variance: Tensor  # log σ_t², broadcastable to mean
    pred_x0: Tensor
    pred_eps: Tensor
    var_out: Tensor | None  # the raw variance channels when the variance is learned


class Diffusion(Process):
    """One schedule × one parameterization × one reverse variance.

    The process interface the LightningModule relies on is ``Process``'s (process_base.py): here on integer
    timesteps 0 .. T-1, with the network called on (x_t, t) — the original index when respaced — and a
    likelihood; nothing fitted from data.
    """

    name = "ddpm"
    has_likelihood = True

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: Parameterization | str = "eps",
        variance: ReverseVariance | str = "fixed_small",
        timestep_map: Tensor | None = None,
    ):
        self.schedule = schedule
        self.prediction = build_prediction(prediction) if isinstance(prediction, str) else prediction
        self.variance = build_variance(variance) if isinstance(variance, str) else variance
        # For a respaced process: position i of this schedule is timestep timestep_map[i] of the one the network
        # was trained on; the network is always called with the original index.
        self.timestep_map = timestep_map

    @classmethod
    def from_names(
        cls,
        schedule: str = "linear",
        num_timesteps: int = 1000,
        prediction: str = "eps",
        variance: str = "fixed_small",
    ) -> Diffusion:
        return cls(build_schedule(schedule, num_timesteps), prediction, variance)

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    @property
    def out_channel_factor(self) -> int:
        return self.variance.out_channel_factor

    def corrupt(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The network's training input at timestep t: x_t ~ q(x_t | x_0) with the given noise."""
        return q_sample(self.schedule, x0, t, noise)

    # ------------------------------------------------------------------ network output
    def split_output(self, out: Tensor, channels: int) -> tuple[Tensor, Tensor | None]:
        """(B, k·C, ...) -> (mean part (B, C, ...), variance part or None), checking the channel count."""
        expected = channels * self.variance.out_channel_factor
        if out.shape[1] != expected:
            raise ValueError(
                f"the network outputs {out.shape[1]} channels but variance={self.variance.name} needs "
                f"{expected} (= {self.variance.out_channel_factor} x {channels} data channels)"
            )
        if not self.variance.learned:
            return out, None
        mean_out, var_out = out.split(channels, dim=1)
        return mean_out, var_out

    def model_timesteps(self, t: Tensor) -> Tensor:
        """The timesteps to hand the network (original indices when respaced)."""
        if self.timestep_map is None:
            return t
        return self.timestep_map.to(t.device)[t]

    def net_input(self, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return xt, self.model_timesteps(t)

    def call_model(self, model: ModelFn, xt: Tensor, t: Tensor) -> Tensor:
        return model(*self.net_input(xt, t))

    def denoise(self, out: Tensor, xt: Tensor, t: Tensor, clip_denoised: bool = False) -> DenoiserOutput:
        """Read the network's raw output ``out`` at (x_t, t) as the reverse step."""
        mean_out, var_out = self.split_output(out, xt.shape[1])
        pred_x0 = self.prediction.to_x0(self.schedule, mean_out, xt, t)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
            pred_eps = eps_from_x0(self.schedule, xt, pred_x0, t)
        else:
            pred_eps = self.prediction.to_eps(self.schedule, mean_out, xt, t)
        mean, _, _ = q_posterior(self.schedule, pred_x0, xt, t)
        log_var = self.variance.log_variance(self.schedule, var_out, t, xt.ndim)
        return DenoiserOutput(mean, log_var, pred_x0, pred_eps, var_out)

    def p_mean_variance(
        self, model: ModelFn, xt: Tensor, t: Tensor, clip_denoised: bool = False
    ) -> DenoiserOutput:
        return self.denoise(self.call_model(model, xt, t), xt, t, clip_denoised)

    # ------------------------------------------------------------------ respacing
    def respaced(self, steps: int | str | None) -> Diffusion:
        """The same process on a subset of its steps (IDDPM's SpacedDiffusion); ``None`` keeps all steps."""
        if steps is None:
            return self
        kept = parse_respacing(self.num_timesteps, steps)
        if len(kept) == self.num_timesteps:
            return self
        base_map = self.timestep_map if self.timestep_map is not None else torch.arange(self.num_timesteps)
        kept_t = torch.tensor(kept, dtype=torch.long)
        timestep_map = base_map[kept_t]
        prediction = self.prediction.respaced(self.schedule, timestep_map)
        return Diffusion(self.schedule.respaced(kept), prediction, self.variance, timestep_map)

    def __repr__(self) -> str:
        return f"Diffusion({self.schedule!r}, {self.prediction!r}, {self.variance!r})"


def parse_respacing(num_timesteps: int, spec: int | str) -> list[int]:
    """Which of ``num_timesteps`` steps to keep: exactly improved-diffusion's ``space_timesteps``.

    ``spec``: section counts "10,15,20" (split 0..T-1 into that many sections, the first T % n one step
    longer, and take evenly spaced steps within each, first and last included); an int N or "N" is one section
    of N steps. "ddimN" is the smallest integer stride giving exactly N steps from 0 (where none does, which
    improved-diffusion refuses, DDIM's stride T // N and its first N steps).
    """
    T = num_timesteps
    original = spec
    if isinstance(spec, str):
        spec = spec.strip()
        if spec.startswith("ddim"):
            return _ddim_stride(T, _parse_count(spec[4:], original, T))
    counts = [_parse_count(c, original, T) for c in str(spec).split(",")]
    size_per, extra = divmod(T, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise ValueError(
                f"sampler.steps={original!r}: section {i} has {size} steps, cannot take {count} of them"
            )
        kept += [start + j for j in _section_steps(size, count)]
        start += size
    return sorted(set(kept))


def _section_steps(size: int, count: int) -> list[int]:
    """``count`` of ``size`` steps as improved-diffusion picks them: a float stride accumulated step by step and
    rounded half to even, so that exact .5 ties fall where its accumulated rounding puts them."""
    stride = (size - 1) / (count - 1) if count > 1 else 1.0
    position, steps = 0.0, []
    for _ in range(count):
        steps.append(round(position))
        position += stride
    return steps


def _ddim_stride(T: int, n: int) -> list[int]:
    stride = -(-T // n)  # the smallest stride with at most n steps (the count falls as the stride grows)
    if len(range(0, T, stride)) == n:
        return list(range(0, T, stride))
    return list(range(0, T, T // n))[:n]


def _parse_count(value: int | str, original: int | str, T: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"sampler.steps={original!r} does not parse: use an integer N <= T={T}, 'ddimN', or section counts "
            "like '10,15,20'"
        ) from None
    if not 1 <= n <= T:
        raise ValueError(f"sampler.steps={original!r} is invalid: the step count must be between 1 and T={T}")
    return n
