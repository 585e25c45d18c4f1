"""What the network predicts: ε, x_0, v or the posterior mean μ̃ — and the conversions between them.

With a = sqrt(abar_t), s = sqrt(1 - abar_t) and x_t = a·x_0 + s·ε:

    ε   = (x_t - a·x_0) / s
    x_0 = (x_t - s·ε) / a
    v   = a·ε - s·x_0         (Salimans & Ho 2022)   ⇒ x_0 = a·x_t - s·v,  ε = s·x_t + a·v
    μ̃   = c_0·x_0 + c_t·x_t   (the mean of q(x_{t-1} | x_t, x_0))     ⇒ x_0 = (μ̃ - c_t·x_t) / c_0

Each parameterization is a tiny object: ``target`` (what the simple loss regresses on), ``to_x0`` and
``to_eps`` (read the network's output as a clean image or as noise), ``from_x0_eps`` (the output a perfect
network would give), and ``eps_error_scale`` = |Δε|² / |Δtarget|², the factor that moves a loss weight
between ε-space and the target's space (ε: 1, x_0: SNR, v: abar, μ̃: SNR / c_0²).
"""

from __future__ import annotations

from torch import Tensor

from .gaussian import q_sample
from .schedules import NoiseSchedule

__all__ = [
    "Parameterization",
    "EpsPrediction",
    "X0Prediction",
    "VPrediction",
    "MeanPrediction",
    "PREDICTIONS",
    "build_prediction",
]


class Parameterization:
    name: str = "base"

    def target(self, schedule: NoiseSchedule, x0: Tensor, eps: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        return self.from_x0_eps(schedule, x0, eps, t)

    def from_x0_eps(self, schedule: NoiseSchedule, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def to_x0(self, schedule: NoiseSchedule, out: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def to_eps(self, schedule: NoiseSchedule, out: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def eps_error_scale(self, schedule: NoiseSchedule, t: Tensor) -> Tensor:
        raise NotImplementedError

    def respaced(self, trained: NoiseSchedule, timestep_map: Tensor) -> Parameterization:
        """This parameterization on a respaced grid whose position i is timestep ``timestep_map[i]`` of
        ``trained``, the schedule the network learnt on. ε, x_0 and v mean the same on every grid: itself."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def eps_from_x0(schedule: NoiseSchedule, xt: Tensor, x0: Tensor, t: Tensor) -> Tensor:
    """ε implied by x_t and a (predicted) x_0."""
    return (xt - schedule.at("sqrt_alphas_cumprod", t, xt.ndim) * x0) / schedule.at(
        "sqrt_one_minus_alphas_cumprod", t, xt.ndim
    )


def x0_from_eps(schedule: NoiseSchedule, xt: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x_0 implied by x_t and a (predicted) ε."""
    return (xt - schedule.at("sqrt_one_minus_alphas_cumprod", t, xt.ndim) * eps) / schedule.at(
        "sqrt_alphas_cumprod", t, xt.ndim
    )


class EpsPrediction(Parameterization):
    """The network predicts the noise ε (Ho et al. 2020)."""

    name = "eps"

    def from_x0_eps(self, schedule, x0, eps, t):
        return eps

    def to_x0(self, schedule, out, xt, t):
        return x0_from_eps(schedule, xt, out, t)

    def to_eps(self, schedule, out, xt, t):
        return out

    def eps_error_scale(self, schedule, t):
        return schedule.at("alphas_cumprod", t).new_ones(t.shape)


class X0Prediction(Parameterization):
    """The network predicts the clean image x_0 directly."""

    name = "x0"

    def from_x0_eps(self, schedule, x0, eps, t):
        return x0

    def to_x0(self, schedule, out, xt, t):
        return out

    def to_eps(self, schedule, out, xt, t):
        return eps_from_x0(schedule, xt, out, t)

    def eps_error_scale(self, schedule, t):
        return schedule.at("snr", t)


class VPrediction(Parameterization):
    """The network predicts the velocity v = a·ε - s·x_0 (Salimans & Ho 2022)."""

    name = "v"

    def from_x0_eps(self, schedule, x0, eps, t):
        a = schedule.at("sqrt_alphas_cumprod", t, x0.ndim)
        s = schedule.at("sqrt_one_minus_alphas_cumprod", t, x0.ndim)
        return a * eps - s * x0

    def to_x0(self, schedule, out, xt, t):
        a = schedule.at("sqrt_alphas_cumprod", t, xt.ndim)
        s = schedule.at("sqrt_one_minus_alphas_cumprod", t, xt.ndim)
        return a * xt - s * out

    def to_eps(self, schedule, out, xt, t):
        a = schedule.at("sqrt_alphas_cumprod", t, xt.ndim)
        s = schedule.at("sqrt_one_minus_alphas_cumprod", t, xt.ndim)
        return s * xt + a * out

    def eps_error_scale(self, schedule, t):
        return schedule.at("alphas_cumprod", t)


class MeanPrediction(Parameterization):
    """The network predicts the reverse step's mean μ̃_t = c_0·x_0 + c_t·x_t directly: the baseline of Ho et al.
    2020 (Table 2's μ̃ rows; improved-diffusion's PREVIOUS_X), with c_0, c_t the posterior mean's coefficients.
    Reading x_0 from it divides by c_0, which is ~1e-4 at the last steps of a 1000-step schedule, so x_0 (and ε)
    estimates there are noisy; the sampler's clipping of x_0 then sets the step's mean, as for the others."""

    name = "mean"

    def __init__(self, trained: NoiseSchedule | None = None, timestep_map: Tensor | None = None):
        self._trained, self._map = trained, timestep_map

    def respaced(self, trained, timestep_map):
        # μ̃ is the mean of the trained chain's step, not of a respaced one: keep reading the output with the
        # trained schedule's coefficients at the original timesteps (x_t's marginal is the same at both).
        return MeanPrediction(trained if self._trained is None else self._trained, timestep_map)

    def _coefs(self, schedule: NoiseSchedule, t: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
        if self._trained is not None:
            schedule, t = self._trained, self._map.to(t.device)[t]
        return schedule.at("posterior_mean_coef1", t, ndim), schedule.at("posterior_mean_coef2", t, ndim)

    def target(self, schedule, x0, eps, xt, t):
        c0, ct = self._coefs(schedule, t, x0.ndim)
        return c0 * x0 + ct * xt

    def from_x0_eps(self, schedule, x0, eps, t):
        return self.target(schedule, x0, eps, q_sample(schedule, x0, t, eps), t)

    def to_x0(self, schedule, out, xt, t):
        c0, ct = self._coefs(schedule, t, xt.ndim)
        return (out - ct * xt) / c0

    def to_eps(self, schedule, out, xt, t):
        return eps_from_x0(schedule, xt, self.to_x0(schedule, out, xt, t), t)

    def eps_error_scale(self, schedule, t):
        return schedule.at("snr", t) / self._coefs(schedule, t, 1)[0] ** 2


PREDICTIONS: dict[str, type[Parameterization]] = {
    "eps": EpsPrediction,
    "x0": X0Prediction,
    "v": VPrediction,
    "mean": MeanPrediction,
}


def build_prediction(name: str) -> Parameterization:
    if name not in PREDICTIONS:
        raise ValueError(f"prediction={name!r} is unknown; choose one of {sorted(PREDICTIONS)}")
    return PREDICTIONS[name]()
