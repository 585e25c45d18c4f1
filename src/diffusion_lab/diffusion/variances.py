"""The reverse-process variance Σ_θ(x_t, t) = σ_t² I: fixed, or read from the network's extra channels.

``out_channel_factor`` says how many times the data's channels the network must output (2 when the
variance is learned: the first C channels are the mean parameterization, the last C the variance).
``log_variance(schedule, var_out, t, ndim)`` returns log σ_t², broadcastable to the batch.
"""

from __future__ import annotations

from torch import Tensor

from .schedules import NoiseSchedule

__all__ = [
    "ReverseVariance",
    "FixedSmallVariance",
    "FixedLargeVariance",
    "LearnedVariance",
    "LearnedRangeVariance",
    "VARIANCES",
    "build_variance",
]


class ReverseVariance:
    name = "base"
    learned = False

    @property
    def out_channel_factor(self) -> int:
        return 2 if self.learned else 1

    def log_variance(self, schedule: NoiseSchedule, var_out: Tensor | None, t: Tensor, ndim: int) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FixedSmallVariance(ReverseVariance):
    """σ_t² = β̃_t, the true posterior variance (lower bound on the optimal σ² for a point-mass x_0)."""

    name = "fixed_small"

    def log_variance(self, schedule, var_out, t, ndim):
        return schedule.at("posterior_log_variance_clipped", t, ndim)


class FixedLargeVariance(ReverseVariance):
    """σ_t² = β_t (upper bound, for x_0 ~ N(0, I)); at the first step β̃_1 is used instead (IDDPM convention,
    so that the decoder's likelihood is not needlessly blurred)."""

    name = "fixed_large"

    def log_variance(self, schedule, var_out, t, ndim):
        return schedule.at("large_log_variance", t, ndim)


class LearnedVariance(ReverseVariance):
    """The network outputs log σ_t² directly."""

    name = "learned"
    learned = True

    def log_variance(self, schedule, var_out, t, ndim):
        return var_out


class LearnedRangeVariance(ReverseVariance):
    """IDDPM: the network outputs v ∈ [-1, 1] (unconstrained in practice) and
    log σ² = frac · log β_t + (1 - frac) · log β̃_t with frac = (v + 1) / 2."""

    name = "learned_range"
    learned = True

    def log_variance(self, schedule, var_out, t, ndim):
        min_log = schedule.at("posterior_log_variance_clipped", t, ndim)
        max_log = schedule.at("betas", t, ndim).log()
        frac = (var_out + 1.0) / 2.0
        return frac * max_log + (1.0 - frac) * min_log


VARIANCES: dict[str, type[ReverseVariance]] = {
    "fixed_small": FixedSmallVariance,
    "fixed_large": FixedLargeVariance,
    "learned": LearnedVariance,
    "learned_range": LearnedRangeVariance,
}


def build_variance(name: str) -> ReverseVariance:
    if name not in VARIANCES:
        raise ValueError(f"variance={name!r} is unknown; choose one of {sorted(VARIANCES)}")
    return VARIANCES[name]()
