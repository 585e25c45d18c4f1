"""Noise schedules: the grid of noise levels, declared once and handed to every other part.

A schedule is a plain object (deliberately *not* an ``nn.Module``): its tables are not parameters or
buffers, so no optimizer, EMA or ``load_state_dict`` can ever touch them. Tables are computed in float64 on
the CPU; ``at(name, t, ndim)`` gathers a table at timesteps ``t`` on ``t``'s device (copies are cached per
device) and returns float32 shaped for broadcasting against a batch.

Index convention (as in improved-diffusion): ``t`` runs over ``0 .. T-1``; index ``t`` is the paper's step
``t + 1``. So ``alphas_cumprod[0] = 1 - beta_1`` and ``alphas_cumprod_prev[0] = 1``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "NoiseSchedule",
    "LinearSchedule",
    "CosineSchedule",
    "SigmoidSchedule",
    "QuadraticSchedule",
    "SCHEDULES",
    "build_schedule",
]


def _check_num_timesteps(num_timesteps: int) -> int:
    if not isinstance(num_timesteps, int) or isinstance(num_timesteps, bool) or num_timesteps < 1:
        raise ValueError(
            f"schedule.num_timesteps={num_timesteps!r} is invalid: the number of diffusion steps T must be "
            "an integer >= 1"
        )
    return num_timesteps


class NoiseSchedule:
    """A discrete variance-preserving schedule defined by its betas, with every derived table."""

    name = "custom"

    def __init__(self, betas: Tensor, alphas_cumprod: Tensor | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten().cpu()
        if betas.numel() < 1:
            raise ValueError("schedule betas are empty: the number of diffusion steps T must be >= 1")
        if not bool(((betas > 0) & (betas < 1)).all()):
            bad = betas[~((betas > 0) & (betas < 1))][0].item()
            raise ValueError(f"schedule betas must lie in the open interval (0, 1); got beta={bad!r}")
        self.betas = betas
        self.num_timesteps = int(betas.numel())
        self.alphas = 1.0 - betas
        # ``alphas_cumprod`` may be given when it is the defining table (a respaced schedule), so that it is kept
        # bit-for-bit rather than recomputed as a product of the derived 1 - beta (off by a few ulps).
        if alphas_cumprod is None:
            self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        else:
            self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten().cpu().clone()
            if self.alphas_cumprod.shape != betas.shape:
                raise ValueError("schedule alphas_cumprod must have one value per beta")
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_alphas_cumprod_prev = self.alphas_cumprod_prev.sqrt()
        # 1 - abar here, in float64, and nowhere else: from a float32 abar it would lose the relative precision
        # of the first steps' small 1 - abar (1e-4 and below at abar near 1).
        self.one_minus_alphas_cumprod = 1.0 - self.alphas_cumprod
        self.one_minus_alphas_cumprod_prev = 1.0 - self.alphas_cumprod_prev
        self.sqrt_one_minus_alphas_cumprod = self.one_minus_alphas_cumprod.sqrt()
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        self.log_snr = self.snr.log()
        # Posterior q(x_{t-1} | x_t, x_0) = N(coef1 * x_0 + coef2 * x_t, posterior_variance).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta~ is 0 at the first step; clip its log there to the next value (as IDDPM does).
        first = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_variance_clipped = torch.cat([first.reshape(1), self.posterior_variance[1:]])
        self.posterior_log_variance_clipped = self.posterior_variance_clipped.log()
        # The "fixed large" reverse variance: beta_t, with beta~ at the first step (IDDPM's convention).
        self.large_variance = torch.cat([first.reshape(1), betas[1:]])
        self.large_log_variance = self.large_variance.log()
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
        )
        self._computed: dict[str, Tensor] = {}  # float64 tables made on demand (``ddim_eps_coef``)
        self._device_cache: dict[tuple[str, torch.device], Tensor] = {}

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor, max_beta: float = 1.0) -> NoiseSchedule:
        """Betas whose cumulative product is exactly ``alphas_cumprod`` (beta_i = 1 - abar_i / abar_{i-1})."""
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        betas = 1.0 - abar / prev
        if max_beta < 1.0 and bool((betas > max_beta).any()):
            return NoiseSchedule(betas.clamp(max=max_beta))  # clipped: abar is no longer the one given
        return NoiseSchedule(betas, alphas_cumprod=abar)

    def respaced(self, timesteps: list[int] | Tensor) -> NoiseSchedule:
        """The schedule restricted to the kept (sorted) ``timesteps``, keeping their alpha-bar exactly."""
        keep = torch.as_tensor(sorted(int(t) for t in timesteps), dtype=torch.long)
        return NoiseSchedule.from_alphas_cumprod(self.alphas_cumprod[keep])

    # ------------------------------------------------------------------ lookup
    def table(self, name: str, device: torch.device | str | None = None) -> Tensor:
        """A float32 copy of a table on ``device`` (cached)."""
        device = torch.device(device or "cpu")
        key = (name, device)
        if key not in self._device_cache:
            values = self._computed[name] if name in self._computed else getattr(self, name)
            self._device_cache[key] = values.to(device=device, dtype=torch.float32)
        return self._device_cache[key]

    def at(self, name: str, t: Tensor, ndim: int = 1) -> Tensor:
        """Table ``name`` at integer timesteps ``t`` (B,), shaped (B, 1, ..., 1) with ``ndim`` dims in all."""
        values = self.table(name, t.device)[t.long()]
        return values.reshape(values.shape + (1,) * (ndim - 1))

    def ddim_eps_coef(self, eta: float, t: Tensor, ndim: int = 1) -> Tensor:
        """sqrt(1 - abar_{t-1} - sigma_t^2) with sigma_t^2 = eta^2 beta~_t, the eps-coefficient of a DDIM(eta)
        step, computed in float64 (the difference cancels to ~1e-3 of its terms at a respaced first step)."""
        name = f"ddim_eps_coef(eta={float(eta)!r})"
        if name not in self._computed:
            rest = self.one_minus_alphas_cumprod_prev - eta**2 * self.posterior_variance
            self._computed[name] = rest.clamp(min=0).sqrt()
        return self.at(name, t, ndim)

    def __len__(self) -> int:
        return self.num_timesteps

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(T={self.num_timesteps}, beta=[{self.betas[0]:.3g}..{self.betas[-1]:.3g}], "
            f"abar_T={self.alphas_cumprod[-1]:.3g})"
        )


def _scaled_endpoints(T: int, beta_start: float, beta_end: float) -> tuple[float, float]:
    """The β end points given for T = 1000, scaled by 1000/T (IDDPM) so any T keeps ᾱ_T about the same; the
    end is clipped at 0.999 for very small T."""
    scale = 1000.0 / T
    return scale * beta_start, min(scale * beta_end, 0.999)


class LinearSchedule(NoiseSchedule):
    """Ho et al. 2020: betas linear from 1e-4 to 0.02 at T = 1000, scaled by 1000/T for other T (IDDPM)."""

    name = "linear"

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        T = _check_num_timesteps(num_timesteps)
        lo, hi = _scaled_endpoints(T, beta_start, beta_end)
        super().__init__(torch.linspace(lo, hi, T, dtype=torch.float64))


class QuadraticSchedule(NoiseSchedule):
    """sqrt(beta) linear between the linear schedule's end points (the "quad" schedule of DDIM/CompVis)."""

    name = "quadratic"

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        T = _check_num_timesteps(num_timesteps)
        lo, hi = _scaled_endpoints(T, beta_start, beta_end)
        super().__init__(torch.linspace(math.sqrt(lo), math.sqrt(hi), T, dtype=torch.float64) ** 2)


class CosineSchedule(NoiseSchedule):
    """Nichol & Dhariwal 2021: abar(t) = cos²(((t/T + s) / (1 + s)) · π/2) / abar(0), betas clipped at 0.999."""

    name = "cosine"

    def __init__(self, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        T = _check_num_timesteps(num_timesteps)
        steps = torch.arange(T + 1, dtype=torch.float64) / T

        def f(u: Tensor) -> Tensor:
            return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        abar = f(steps) / f(torch.zeros(1, dtype=torch.float64))
        betas = (1.0 - abar[1:] / abar[:-1]).clamp(max=max_beta)
        super().__init__(betas)


class SigmoidSchedule(NoiseSchedule):
    """Chen 2023 / Jabri et al. 2023: abar(t) follows a shifted sigmoid of t; betas clipped at max_beta."""

    name = "sigmoid"

    def __init__(
        self,
        num_timesteps: int = 1000,
        start: float = -3.0,
        end: float = 3.0,
        tau: float = 1.0,
        max_beta: float = 0.999,
    ):
        T = _check_num_timesteps(num_timesteps)
        if tau <= 0:
            raise ValueError(f"schedule.tau={tau!r} is invalid: the sigmoid temperature must be > 0")
        u = torch.arange(T + 1, dtype=torch.float64) / T
        v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
        v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
        abar = (-torch.sigmoid((u * (end - start) + start) / tau) + v_end) / (v_end - v_start)
        betas = (1.0 - abar[1:] / abar[:-1]).clamp(min=1e-8, max=max_beta)
        super().__init__(betas)


SCHEDULES: dict[str, type[NoiseSchedule]] = {
    "linear": LinearSchedule,
    "cosine": CosineSchedule,
    "sigmoid": SigmoidSchedule,
    "quadratic": QuadraticSchedule,
}


def build_schedule(name: str, num_timesteps: int = 1000, **kwargs) -> NoiseSchedule:
    """Build a schedule by name: ``build_schedule("cosine", 4000)``."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule={name!r} is unknown; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](num_timesteps, **kwargs)
