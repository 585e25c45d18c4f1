"""Deterministic samplers on the probability-flow ODE: Euler and Heun (Karras et al. 2022) and DPM-Solver++(2M)
(Lu et al. 2022).

All of them walk the kept timesteps of the (respaced) discrete process, t_{n-1} > ... > t_0, and then to clean
data (ᾱ = 1), exactly as DDIM does: x at t_{n-1} is the starting noise, and n kept steps cost n network
evaluations (Heun: up to 2n - 1). With α_i = sqrt(ᾱ_i), σ_i = sqrt(1 - ᾱ_i) at position i (α = 1, σ = 0 after the
last), the network enters only through the denoiser ``Diffusion.p_mean_variance``: its x̂_0 and ε̂, so every
parameterization (ε, x_0, v), a learned variance (whose channels are ignored) and respacing work alike.

Euler / Heun (Karras et al. 2022, Alg. 1) integrate the ODE in the variance-exploding variables
y = x / α, σ̄ = σ / α, where it reads dy/dσ̄ = ε̂(x, t): a step from σ̄ to σ̄' is y' = y + (σ̄' - σ̄)·d, i.e.

    x' = (α'/α)·x + (σ' - α'σ/α)·d        (d = ε̂ for Euler; Heun averages ε̂ at both ends)

Euler in these variables *is* DDIM(η = 0). Heun corrects a step with a second evaluation at the next kept
timestep, except on the last step (to σ̄ = 0, where Euler returns x̂_0) and, with ``euler_first`` (default), the
first: it leaves the starting noise at σ̄_max, which is enormous for schedules that end near ᾱ = 0 (cosine:
σ̄ ≈ 2·10⁴ at t = T-1, against ≈ 12 one step of 20 later). There y - x̂_0 grows like σ̄, so the Euler step is
accurate, while the trapezoidal corrector weights the slope at the far smaller σ̄' over half of that interval
(Gaussian data, cosine, 10 steps: error 21 with the correction against 0.04 without; on the linear schedule,
σ̄_max ≈ 157, the two agree). Karras et al. avoid it by starting at σ_max = 80 instead; ``euler_first=False``
gives their Alg. 1 on this grid.

DPM-Solver++(2M) integrates the data-prediction form in log-SNR λ = log(α/σ): with h = λ' - λ,

    first order:   x' = (σ'/σ)·x + α'·(1 - e^{-h})·x̂_0          (= DDIM(η = 0))
    second order:  the same with D = (1 + 1/(2r))·x̂_0 - 1/(2r)·x̂_0^{prev},  r = h_prev / h

using the x̂_0 of the previous position (multistep: no extra evaluation). The first step is first order (no
previous x̂_0); the step to clean data (λ' = ∞) is first order (it returns x̂_0, Lu et al.'s "denoise to zero"),
since the linear extrapolation diverges there. ``lower_order_final`` (default) also makes the step into t_0, the
last at finite noise, first order: every respacing of the core keeps t_0 = 0, whose log-SNR lies far above its
neighbour's (linear schedule, 20 steps: λ = 4.6 against 1.7), so r = h_prev / h is small and the extrapolation
with weight 1/(2r) overshoots (Gaussian data, 20 steps: 5x (linear) to 30x (cosine) the error of a first-order
step there).
"""

from __future__ import annotations

import math

from torch import Tensor

from ..diffusion.process import Diffusion
from .base import Sampler

__all__ = ["EulerSampler", "HeunSampler", "DPMSolverPPSampler", "alpha_sigma", "pf_ode_step"]


def alpha_sigma(spaced: Diffusion, i: int) -> tuple[float, float]:
    """(α, σ) = (sqrt(ᾱ), sqrt(1 - ᾱ)) at position ``i`` of the respaced grid, in float64; i = -1 is clean data."""
    if i < 0:
        return 1.0, 0.0
    s = spaced.schedule
    return float(s.sqrt_alphas_cumprod[i]), float(s.sqrt_one_minus_alphas_cumprod[i])


def pf_ode_step(x: Tensor, d: Tensor, a: float, s: float, a_next: float, s_next: float) -> Tensor:
    """One Euler step of the PF-ODE in (y = x/α, σ̄ = σ/α) with slope ``d`` (an ε estimate), back in x."""
    return (a_next / a) * x + (s_next - a_next * s / a) * d


class _ODESampler(Sampler):
    stochastic = False

    def __init__(self, steps: int | str | None = 50, clip_denoised: bool = True):
        super().__init__(steps, clip_denoised)


class EulerSampler(_ODESampler):
    """Euler on the probability-flow ODE in σ̄-space; one evaluation per kept step (identical to DDIM(η=0))."""

    name = "euler"

    def step(self, diffusion, out, x, t, i, noise):
        a, s = alpha_sigma(diffusion, i)
        a_next, s_next = alpha_sigma(diffusion, i - 1)
        return pf_ode_step(x, out.pred_eps, a, s, a_next, s_next)


class HeunSampler(_ODESampler):
    """Heun's second-order method on the PF-ODE in σ̄-space (Karras et al. 2022, Alg. 1): an Euler predictor to
    the next kept timestep and a trapezoidal corrector there; Euler for the last step to σ̄ = 0 and, with
    ``euler_first``, for the first step out of σ̄_max. 2n - 2 network evaluations for n >= 2 kept steps
    (2n - 1 without ``euler_first``)."""

    name = "heun"

    def __init__(self, steps: int | str | None = 18, euler_first: bool = True, clip_denoised: bool = True):
        super().__init__(steps, clip_denoised)
        self.euler_first = euler_first

    def num_evaluations(self, diffusion: Diffusion) -> int:
        n = diffusion.respaced(self.steps).num_timesteps
        return n + sum(self._corrects(i, n) for i in range(n))

    def _corrects(self, i: int, n: int) -> bool:
        return i > 0 and not (self.euler_first and i == n - 1)

    def walk(self, spaced, model, x, generator, on_step):
        n = spaced.num_timesteps
        for i in self.positions(spaced):
            out = self.evaluate(spaced, model, x, i)
            a, s = alpha_sigma(spaced, i)
            a_next, s_next = alpha_sigma(spaced, i - 1)
            x_next = pf_ode_step(x, out.pred_eps, a, s, a_next, s_next)
            if self._corrects(
                i, n
            ):  # corrector: the slope at the predicted point, averaged with the one at x
                eps_next = self.evaluate(spaced, model, x_next, i - 1).pred_eps
                x_next = pf_ode_step(x, 0.5 * (out.pred_eps + eps_next), a, s, a_next, s_next)
            x = x_next
            on_step(i, self.timestep(spaced, i), x, out.pred_x0)
        return x


class DPMSolverPPSampler(_ODESampler):
    """DPM-Solver++(2M) (Lu et al. 2022): multistep second order in log-SNR on the data prediction x̂_0; one
    evaluation per kept step."""

    name = "dpmpp2m"

    def __init__(
        self, steps: int | str | None = 20, lower_order_final: bool = True, clip_denoised: bool = True
    ):
        super().__init__(steps, clip_denoised)
        self.lower_order_final = lower_order_final

    def walk(self, spaced, model, x, generator, on_step):
        prev_x0: Tensor | None = None
        prev_lam = 0.0
        for i in self.positions(spaced):
            out = self.evaluate(spaced, model, x, i)
            a, s = alpha_sigma(spaced, i)
            lam = math.log(a) - math.log(s)
            if i == 0:  # to clean data (λ = ∞): first order, x' = x̂_0
                x = out.pred_x0.clone()
            else:
                a_next, s_next = alpha_sigma(spaced, i - 1)
                h = math.log(a_next) - math.log(s_next) - lam
                d = out.pred_x0
                if prev_x0 is not None and not (self.lower_order_final and i == 1):
                    r = (lam - prev_lam) / h
                    d = (1.0 + 0.5 / r) * out.pred_x0 - (0.5 / r) * prev_x0
                x = (s_next / s) * x - (a_next * math.expm1(-h)) * d
            prev_x0, prev_lam = out.pred_x0, lam
            on_step(i, self.timestep(spaced, i), x, out.pred_x0)
        return x
