"""What an evaluation row was sampled with, as the report names, groups and orders it: sampler, eta, the variance
and clipping where evaluate changed the checkpoint's, steps, guidance and samples per set."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["FIELDS", "Setting", "num"]

FIELDS = ("sampler", "eta", "variance", "clip", "steps", "guidance", "n")


def num(value: Any) -> float | None:
    """``value`` as a finite float, else None."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class Setting:
    sampler: str | None
    eta: float | None
    steps: float | None
    guidance: float
    n: float | None  # samples per set: scores from different sample sizes are not averaged together
    variance: str | None = None  # evaluate's sampling_variance where it replaced the checkpoint's, else None
    # whether the sampler clipped its x̂_0 estimates to the data range (sampler.clip_denoised); rows written
    # before the field was recorded hold no "clip" key and were clipped (every sampler's default)
    clip: bool = True

    @classmethod
    def of(cls, row: dict[str, Any]) -> Setting:
        sampler = row.get("sampler")
        return cls(
            None if sampler is None else str(sampler),
            num(row.get("eta")),
            num(row.get("steps")),
            num(row.get("guidance")) or 0.0,
            num(row.get("n")),
            None if row.get("variance") is None else str(row["variance"]),
            row.get("clip") is not False,
        )

    @property
    def line(self) -> str:
        """The sampler setting without the step count: one line of a score-against-steps plot."""
        parts = [
            self.sampler or "?",
            f"η={self.eta:g}" if self.eta is not None else "",
            f"σ²={self.variance}" if self.variance is not None else "",
            "" if self.clip else "unclipped",
        ]
        return " ".join(p for p in [*parts, f"w={self.guidance:g}" if self.guidance else ""] if p)

    @property
    def label(self) -> str:
        return self.line + (f", {self.steps:g} steps" if self.steps is not None else "")

    def order(self) -> tuple:
        inf = math.inf
        return (
            self.sampler or "",
            _or(self.eta, -inf),
            self.variance or "",
            not self.clip,
            _or(self.steps, inf),
            self.guidance,
            _or(self.n, inf),
        )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
