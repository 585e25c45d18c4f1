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
        # σ_t² = η² (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · (1 - ᾱ_t / ᾱ_{t-1}) = η² β̃_t; every coefficient comes from the
        # schedule's float64 tables (1 - ᾱ taken from a float32 ᾱ is off by 1e-4 relative at the first steps).
        s = diffusion.schedule
        x_prev = (
            s.at("sqrt_alphas_cumprod_prev", t, x.ndim) * out.pred_x0
            + s.ddim_eps_coef(self.eta, t, x.ndim) * out.pred_eps
        )
        if noise is None or self.eta == 0:
            return x_prev
        return x_prev + self.eta * s.at("posterior_variance", t, x.ndim).sqrt() * noise
