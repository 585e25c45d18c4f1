"""Timestep samplers: which t each training example gets, with importance weights that keep the loss unbiased.

``sample(batch_size, device)`` returns ``(t, weights)``; the trainer multiplies each per-sample loss by its
weight, so E[weight · L_t] under the sampler equals E[L_t] under the uniform distribution.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["TimestepSampler", "UniformTimestepSampler", "ImportanceTimestepSampler", "TIMESTEP_SAMPLERS"]


class TimestepSampler:
    name = "base"

    def __init__(self, num_timesteps: int):
        if num_timesteps < 1:
            raise ValueError(f"timesteps: num_timesteps={num_timesteps!r} must be >= 1")
        self.num_timesteps = num_timesteps

    def probabilities(self) -> np.ndarray:
        raise NotImplementedError

    def sample(
        self, batch_size: int, device: torch.device | str = "cpu", generator=None
    ) -> tuple[Tensor, Tensor]:
        p = torch.from_numpy(self.probabilities()).float()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), weights.to(device)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record per-sample losses (all ranks' already gathered by the caller). No-op by default."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class UniformTimestepSampler(TimestepSampler):
    name = "uniform"

    def probabilities(self) -> np.ndarray:
        return np.full(self.num_timesteps, 1.0 / self.num_timesteps)

    def sample(self, batch_size, device="cpu", generator=None):
        # Straight on the device: no host round trip in the hot path.
        t = torch.randint(0, self.num_timesteps, (batch_size,), device=device, generator=generator)
        return t, torch.ones(batch_size, device=device)


class ImportanceTimestepSampler(TimestepSampler):
    """IDDPM's loss-aware sampler: p(t) ∝ sqrt(E[L_t²]) over the last ``history`` losses of each t, mixed
    with a little of the uniform distribution; uniform until every t has a full history."""

    name = "importance"

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        if history < 1 or not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(
                f"timesteps: history={history!r} must be >= 1 and uniform_prob={uniform_prob!r} in [0, 1]"
            )
        self.history = history
        self.uniform_prob = uniform_prob
        self.loss_history = np.zeros((num_timesteps, history), dtype=np.float64)
        self.loss_counts = np.zeros(num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history).all())

    def probabilities(self) -> np.ndarray:
        if not self.warmed_up():
            return np.full(self.num_timesteps, 1.0 / self.num_timesteps)
        w = np.sqrt(np.mean(self.loss_history**2, axis=-1))
        w /= w.sum()
        w = w * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps
        return w

    def update(self, t: Tensor, losses: Tensor) -> None:
        for ti, loss in zip(t.detach().cpu().tolist(), losses.detach().float().cpu().tolist()):
            if not math.isfinite(loss):  # a non-finite step is skipped; its loss must not steer sampling
                continue
            if self.loss_counts[ti] == self.history:  # full: drop the oldest
                self.loss_history[ti, :-1] = self.loss_history[ti, 1:]
                self.loss_history[ti, -1] = loss
            else:
                self.loss_history[ti, self.loss_counts[ti]] = loss
                self.loss_counts[ti] += 1

    def state_dict(self) -> dict:
        return {"loss_history": self.loss_history.copy(), "loss_counts": self.loss_counts.copy()}

    def load_state_dict(self, state: dict) -> None:
        history = np.asarray(state["loss_history"], dtype=np.float64)
        if history.shape != self.loss_history.shape:
            raise ValueError(
                f"timesteps: checkpointed loss history has shape {history.shape}, this run needs "
                f"{self.loss_history.shape} (T or history length changed)"
            )
        self.loss_history = history.copy()
        self.loss_counts = np.asarray(state["loss_counts"], dtype=np.int64).copy()


TIMESTEP_SAMPLERS: dict[str, type[TimestepSampler]] = {
    "uniform": UniformTimestepSampler,
    "importance": ImportanceTimestepSampler,
}


def build_timestep_sampler(name: str, num_timesteps: int, **kwargs) -> TimestepSampler:
    if name not in TIMESTEP_SAMPLERS:
        raise ValueError(f"timesteps={name!r} is unknown; choose one of {sorted(TIMESTEP_SAMPLERS)}")
    return TIMESTEP_SAMPLERS[name](num_timesteps, **kwargs)
