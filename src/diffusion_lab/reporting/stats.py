"""Intervals over seeds: the Student-t confidence interval of a mean, and of a paired difference.

With n seeds x_1..x_n (mean m, sample standard deviation s) the interval is m ± t_{(1+c)/2, n-1} · s / √n, the
exact interval for the mean of normal draws. A paired difference is the same interval over the per-seed
differences a_i - b_i of two cells trained with the same seeds: the seed's shared effect (initial weights,
data order, timestep draws) cancels, so it separates smaller effects than two independent intervals would.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "CONFIDENCE",
    "Interval",
    "t_interval",
    "paired_difference",
    "verdict",
    "seeds_to_separate",
    "seeds_to_part",
    "projectable",
    "partable",
    "MOST_SEEDS",
]

CONFIDENCE = 0.95
MOST_SEEDS = 100  # seeds_to_separate and seeds_to_part look no further


@dataclass(frozen=True)
class Interval:
    mean: float
    half_width: float  # nan with fewer than two values
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high  # False with a nan half-width


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and the half-width of its Student-t confidence interval (nan half-width below two values)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    mean = math.fsum(xs) / n
    if n < 2:
        return Interval(mean, math.nan, n)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return Interval(mean, _t_quantile(confidence, n - 1) * sd / math.sqrt(n), n)


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy import stats  # here: SciPy's import (about a second) is paid by what computes an interval

    return float(stats.t.ppf((1 + confidence) / 2, dof))


def paired_difference(
    cell: Mapping[int, float], baseline: Mapping[int, float], confidence: float = CONFIDENCE
) -> Interval:
    """The t-interval of cell - baseline over the seeds both have (paired by seed)."""
    seeds = sorted(set(cell) & set(baseline))
    return t_interval([cell[s] - baseline[s] for s in seeds], confidence)


def verdict(difference: Interval, better: str) -> str:
    """'better' / 'worse' when the interval excludes 0 ('min': lower is better, 'max': higher), else
    'not separated' (also when there are too few pairs for an interval)."""
    if difference.n < 2 or math.isnan(difference.half_width) or difference.contains(0.0):
        return "not separated"
    lower = difference.high < 0
    return "better" if lower == (better == "min") else "worse"


def projectable(difference: Interval) -> bool:
    """Whether seeds_to_separate can say anything of the difference: two seeds or more and a non-zero mean (its
    None otherwise means 'cannot be said', else 'more than ``most``')."""
    return difference.n >= 2 and not math.isnan(difference.half_width) and difference.mean != 0


def seeds_to_separate(
    difference: Interval, confidence: float = CONFIDENCE, most: int = MOST_SEEDS
) -> int | None:
    """The fewest seeds whose interval would exclude 0 if the difference's mean and spread stayed as measured:
    the smallest m >= n with t_{(1+c)/2, m-1} · s / √m < |mean|, s recovered from the interval's half-width.

    A planning figure for how many more seeds to run, not a promise: at a few seeds s is itself uncertain. None
    where it cannot be said (fewer than two seeds, a zero mean) or where it would take more than ``most``."""
    if not projectable(difference):
        return None
    return _fewest_seeds(difference.n, _sd(difference, confidence), abs(difference.mean), confidence, most)


def seeds_to_part(
    lower: Interval, higher: Interval, confidence: float = CONFIDENCE, most: int = MOST_SEEDS
) -> int | None:
    """The fewest seeds per side at which two independent intervals would stop overlapping, ``lower``'s below
    ``higher``'s, if both means and spreads stayed as measured: the smallest m >= both n with
    t_{(1+c)/2, m-1} · (s_lower + s_higher) / √m < mean_higher - mean_lower (lower.high < higher.low).

    The same planning figure as :func:`seeds_to_separate` for the unpaired comparison. None where it cannot be
    said (either side under two seeds, or ``lower``'s mean not below ``higher``'s) or past ``most``."""
    if not partable(lower, higher):
        return None
    spread = _sd(lower, confidence) + _sd(higher, confidence)
    return _fewest_seeds(max(lower.n, higher.n), spread, higher.mean - lower.mean, confidence, most)


def partable(lower: Interval, higher: Interval) -> bool:
    """Whether seeds_to_part can say anything of the pair: two seeds or more a side and ``lower``'s mean below
    ``higher``'s (its None otherwise means 'cannot be said', else 'more than ``most``')."""
    spreads = all(i.n >= 2 and not math.isnan(i.half_width) for i in (lower, higher))
    return spreads and lower.mean < higher.mean


def _sd(interval: Interval, confidence: float) -> float:
    """The sample standard deviation behind an interval of two values or more."""
    return interval.half_width * math.sqrt(interval.n) / _t_quantile(confidence, interval.n - 1)


def _fewest_seeds(n: int, spread: float, gap: float, confidence: float, most: int) -> int | None:
    """The smallest m in [n, most] with t_{(1+c)/2, m-1} · spread / √m < gap, else None."""
    import numpy as np
    from scipy import stats

    m = np.arange(n, most + 1)  # every candidate at once: one quantile call, not one a seed count
    apart = stats.t.ppf((1 + confidence) / 2, m - 1) * spread / np.sqrt(m) < gap
    return int(m[apart.argmax()]) if apart.any() else None
