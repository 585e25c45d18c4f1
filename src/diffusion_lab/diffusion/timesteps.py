"""Timestep samplers: which t each training example gets, with importance weights that keep the loss unbiased.

``sample(batch_size, device)`` returns ``(t, weights)``; the trainer multiplies each per-sample loss by its
weight, so E[weight · L_t] under the sampler equals E[L_t] under the uniform distribution.

The discrete samplers draw integer levels of a discrete process (ddpm, cold). The continuous ones draw a noise
level from a density with unit weights (the density is itself the design choice, as a loss weighting is): EDM's σ
(log-normal; Table 1's VP and VE distributions) and a flow's t in [0, 1] (uniform, logit-normal, mode).
``processes`` names the processes a sampler applies to.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .edm import vp_sigma

__all__ = [
    "TimestepSampler",
    "UniformTimestepSampler",
    "ImportanceTimestepSampler",
    "NoiseLevelSampler",
    "EDMLogNormalSampler",
    "VPUniformTimeSampler",
    "VELogUniformSampler",
    "FlowUniformSampler",
    "FlowLogitNormalSampler",
    "FlowModeSampler",
    "TIMESTEP_SAMPLERS",
]


class TimestepSampler:
    name = "base"
    processes: tuple[str, ...] = ("ddpm", "cold")  # the processes on integer levels 0 .. T-1

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
    with a little of the uniform distribution; uniform until every t has a full history.

    The history lives on the device the timesteps are drawn on, and ``sample`` / ``update`` run there without a
    host read (IDDPM's version loops over the batch in Python on the host: a device sync every step, which
    drains a GPU's queue). ``update`` is the vectorized form of that loop: each t's new losses are appended in
    batch order and only its last ``history`` values kept.
    """

    name = "importance"

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        if history < 1 or not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(
                f"timesteps: history={history!r} must be >= 1 and uniform_prob={uniform_prob!r} in [0, 1]"
            )
        self.history = history
        self.uniform_prob = uniform_prob
        self._history = torch.zeros((num_timesteps, history), dtype=torch.float64)
        self._counts = torch.zeros(num_timesteps, dtype=torch.long)

    # read-only views for inspection and tests (host copies)
    @property
    def loss_history(self) -> np.ndarray:
        return self._history.cpu().numpy()

    @property
    def loss_counts(self) -> np.ndarray:
        return self._counts.cpu().numpy()

    def _on(self, device: torch.device | str) -> None:
        device = torch.device(device)
        if self._history.device != device:
            self._history, self._counts = self._history.to(device), self._counts.to(device)

    def _warm(self) -> Tensor:
        """Every t has a full history (a device bool: no host read)."""
        return (self._counts == self.history).all()

    def warmed_up(self) -> bool:
        return bool(self._warm())

    def _probabilities(self) -> Tensor:
        """p(t) as a float64 tensor on the history's device (no host read)."""
        T = self.num_timesteps
        w = self._history.square().mean(dim=-1).sqrt()
        w = w / w.sum() * (1.0 - self.uniform_prob) + self.uniform_prob / T
        return torch.where(self._warm(), w, torch.full_like(w, 1.0 / T))

    def probabilities(self) -> np.ndarray:
        return self._probabilities().cpu().numpy()

    def sample(self, batch_size, device="cpu", generator=None):
        self._on(device)
        p = self._probabilities()
        # inverse-CDF draw: data-independent shapes, so no host read on a GPU
        cdf = p.cumsum(0)
        u = torch.rand(batch_size, dtype=torch.float64, device=p.device, generator=generator)
        t = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp_(max=self.num_timesteps - 1)
        weights = (1.0 / (self.num_timesteps * p[t])).float()
        return t, weights

    def update(self, t: Tensor, losses: Tensor) -> None:
        self._on(t.device)
        T, H = self.num_timesteps, self.history
        t = t.detach().long().flatten()
        values = losses.detach().float().double().flatten()
        ok = torch.isfinite(values)  # a non-finite step is skipped; its loss must not steer sampling
        # rank of each finite loss among the finite losses of its t, in batch order
        order = torch.argsort(t, stable=True)
        t_sorted, ok_sorted = t[order], ok[order].long()
        seen = ok_sorted.cumsum(0)
        first = torch.searchsorted(t_sorted, t_sorted)  # where each t's run starts in the sorted batch
        rank = torch.empty_like(t).scatter_(0, order, seen - (seen[first] - ok_sorted[first]) - 1)
        new = torch.zeros(T, dtype=torch.long, device=t.device).index_add_(0, t, ok.long())
        total = self._counts + new
        dropped = (total - H).clamp(min=0)  # oldest values pushed out of the window
        # the old values that stay, moved to the front
        cols = torch.arange(H, device=t.device)
        src = cols + dropped[:, None]
        kept_old = src < self._counts[:, None]
        history = torch.where(kept_old, self._history.gather(1, src.clamp(max=H - 1)), 0.0)
        # the new values after them (one spare column takes the non-finite ones and those pushed out at once)
        pos = self._counts[t] + rank - dropped[t]
        pos = torch.where(ok & (pos >= 0), pos, H)
        history = torch.cat([history, history.new_zeros(T, 1)], dim=1).index_put_((t, pos), values)
        self._history = history[:, :H].contiguous()
        self._counts = total.clamp(max=H)

    def state_dict(self) -> dict:
        return {"loss_history": self.loss_history.copy(), "loss_counts": self.loss_counts.copy()}

    def load_state_dict(self, state: dict) -> None:
        history = torch.as_tensor(np.asarray(state["loss_history"], dtype=np.float64))
        if history.shape != self._history.shape:
            raise ValueError(
                f"timesteps: checkpointed loss history has shape {tuple(history.shape)}, this run needs "
                f"{tuple(self._history.shape)} (T or history length changed)"
            )
        device = self._history.device
        self._history = history.clone().to(device)
        self._counts = torch.as_tensor(np.asarray(state["loss_counts"], dtype=np.int64)).clone().to(device)


class NoiseLevelSampler(TimestepSampler):
    """A continuous noise level per example, ``draw``n from a density; unit weights. No grid of timesteps."""

    def __init__(self):
        pass

    def draw(self, n: int, device: torch.device | str, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def sample(self, batch_size, device="cpu", generator=None):
        return self.draw(batch_size, device, generator), torch.ones(batch_size, device=device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class EDMLogNormalSampler(NoiseLevelSampler):
    """Karras et al. 2022, Table 1 (EDM): ln σ ~ N(P_mean, P_std²)."""

    name = "edm_lognormal"
    processes = ("edm",)

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        if not p_std > 0:
            raise ValueError(f"timesteps.p_std={p_std!r} must be > 0")
        self.p_mean, self.p_std = p_mean, p_std

    def draw(self, n, device, generator):
        return (self.p_mean + self.p_std * torch.randn(n, device=device, generator=generator)).exp()


class VPUniformTimeSampler(NoiseLevelSampler):
    """Table 1 (VP): σ = σ(t) = sqrt(exp(½β_d t² + β_min t) − 1), t ~ U(ε_t, 1)."""

    name = "edm_vp"
    processes = ("edm",)

    def __init__(self, eps_t: float = 1e-5, beta_d: float = 19.9, beta_min: float = 0.1):
        if not 0 < eps_t < 1:
            raise ValueError(f"timesteps.eps_t={eps_t!r} must be in (0, 1)")
        self.eps_t, self.beta_d, self.beta_min = eps_t, beta_d, beta_min

    def draw(self, n, device, generator):
        u = torch.rand(n, device=device, generator=generator)
        return vp_sigma(self.eps_t + (1 - self.eps_t) * u, self.beta_d, self.beta_min)


class VELogUniformSampler(NoiseLevelSampler):
    """Table 1 (VE): σ = σ_min·(σ_max / σ_min)^t, t ~ U(0, 1), i.e. ln σ uniform."""

    name = "edm_ve"
    processes = ("edm",)

    def __init__(self, sigma_min: float = 0.02, sigma_max: float = 100.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"timesteps: need 0 < sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def draw(self, n, device, generator):
        u = torch.rand(n, device=device, generator=generator)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** u


class FlowUniformSampler(NoiseLevelSampler):
    """Rectified flow (Liu et al. 2022): t ~ U(0, 1)."""

    name = "flow_uniform"
    processes = ("flow",)

    def draw(self, n, device, generator):
        return torch.rand(n, device=device, generator=generator)


class FlowLogitNormalSampler(NoiseLevelSampler):
    """Esser et al. 2024, §3.1: t = sigmoid(m + s·z), z ~ N(0, 1) — more weight on the middle of the path."""

    name = "flow_logit_normal"
    processes = ("flow",)

    def __init__(self, m: float = 0.0, s: float = 1.0):
        if not s > 0:
            raise ValueError(f"timesteps.s={s!r} must be > 0")
        self.m, self.s = m, s

    def draw(self, n, device, generator):
        return torch.sigmoid(self.m + self.s * torch.randn(n, device=device, generator=generator))


class FlowModeSampler(NoiseLevelSampler):
    """Esser et al. 2024, §3.1, mode sampling with heavy tails: t = f_mode(u) = 1 − u − s·(cos²(π/2·u) − 1 + u),
    u ~ U(0, 1). s = 0 is uniform; s > 0 favours the middle, s < 0 the ends; f_mode is a bijection of [0, 1]
    for −1 ≤ s ≤ 2 / (π − 2)."""

    name = "flow_mode"
    processes = ("flow",)

    def __init__(self, s: float = 1.29):
        if not -1.0 <= s <= 2.0 / (math.pi - 2.0):
            raise ValueError(
                f"timesteps.s={s!r} must be in [-1, 2/(pi-2) = 1.752] (f_mode must stay monotone)"
            )
        self.s = s

    def draw(self, n, device, generator):
        u = torch.rand(n, device=device, generator=generator)
        return 1.0 - u - self.s * (torch.cos(0.5 * math.pi * u) ** 2 - 1.0 + u)


TIMESTEP_SAMPLERS: dict[str, type[TimestepSampler]] = {
    "uniform": UniformTimestepSampler,
    "importance": ImportanceTimestepSampler,
    "edm_lognormal": EDMLogNormalSampler,
    "edm_vp": VPUniformTimeSampler,
    "edm_ve": VELogUniformSampler,
    "flow_uniform": FlowUniformSampler,
    "flow_logit_normal": FlowLogitNormalSampler,
    "flow_mode": FlowModeSampler,
}


def build_timestep_sampler(name: str, num_timesteps: int | None = None, **kwargs) -> TimestepSampler:
    """``build_timestep_sampler("uniform", 1000)``; the continuous ones take no ``num_timesteps``."""
    if name not in TIMESTEP_SAMPLERS:
        raise ValueError(f"timesteps={name!r} is unknown; choose one of {sorted(TIMESTEP_SAMPLERS)}")
    cls = TIMESTEP_SAMPLERS[name]
    return cls(**kwargs) if issubclass(cls, NoiseLevelSampler) else cls(num_timesteps, **kwargs)
