"""DDIM (Song et al. 2021): x_{t-1} = sqrt(ᾱ_{t-1}) x̂_0 + sqrt(1 - ᾱ_{t-1} - σ_t²) ε̂ + σ_t z,
σ_t = η · sqrt((1 - ᾱ_{t-1}) / (1 - ᾱ_t)) · sqrt(1 - ᾱ_t / ᾱ_{t-1}). η = 0 is deterministic; η = 1 gives
the DDPM posterior's σ (β̃_t)."""

from __future__ import annotations

from .base import Sampler

__all__ = ["DDIMSampler"]


class DDIMSampler(Sampler):
    name = "ddim"

    def __init__(self, steps: int | str | None = 50, eta: float = 0.0, clip_denoised: bool = True):
        super().__init__(steps, clip_denoised)
        if eta < 0:
            raise ValueError(f"sampler.eta={eta!r} is invalid: η must be >= 0 (0 deterministic, 1 DDPM-like)")
        self.eta = eta

    def step(self, diffusion, out, x, t, i, noise):
        s = diffusion.schedule
        abar, abar_prev = s.at("alphas_cumprod", t, x.ndim), s.at("alphas_cumprod_prev", t, x.ndim)
        sigma = self.eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
        x_prev = (
            abar_prev.sqrt() * out.pred_x0 + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * out.pred_eps
        )
        if noise is None or self.eta == 0:
            return x_prev
        return x_prev + sigma * noise
