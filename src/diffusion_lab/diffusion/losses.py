"""Training losses. Each is a small callable on the network's raw output that returns a dict of per-sample
(B,) terms — ``loss`` is what is optimized; the others (``mse``, ``vb``) are there to be logged.

    terms = loss_fn(diffusion, model_out, x0, xt, t, noise)

The network is called once by the caller; the loss does not own it. ``processes`` names the processes a loss
applies to (``build`` refuses it with another): ``simple`` / ``vlb`` / ``hybrid`` the Gaussian one (ddpm),
``edm`` the σ-space process of Karras et al. 2022, ``flow`` rectified flow, ``restoration`` cold diffusion.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gaussian import NATS_PER_BIT, discretized_gaussian_log_likelihood, mean_flat, normal_kl, q_posterior
from .process import Diffusion
from .weightings import UniformWeighting, Weighting

__all__ = [
    "Loss",
    "SimpleLoss",
    "VLBLoss",
    "HybridLoss",
    "EDMLoss",
    "FlowMatchingLoss",
    "RestorationLoss",
    "vb_terms_bpd",
    "LOSSES",
    "build_loss",
    "check_compatible",
]


def vb_terms_bpd(
    diffusion: Diffusion, model_out: Tensor, x0: Tensor, xt: Tensor, t: Tensor, clip_denoised: bool = False
) -> Tensor:
    """One term of the variational bound, in bits per dimension, (B,):
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_θ(x_{t-1} | x_t)) for t ≥ 2 (index ≥ 1), and the discretized
    decoder NLL -log p_θ(x_0 | x_1) over 256 bins at t = 1 (index 0). ``clip_denoised`` clips the predicted
    x_0 to [-1, 1] before it makes the mean μ_θ of p_θ (improved-diffusion's evaluation; training never clips)."""
    true_mean, _, true_log_var = q_posterior(diffusion.schedule, x0, xt, t)
    out = diffusion.denoise(model_out, xt, t, clip_denoised)
    log_var = out.log_variance.expand_as(out.mean)
    kl = mean_flat(normal_kl(true_mean, true_log_var, out.mean, log_var)) / NATS_PER_BIT
    decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(x0, out.mean, 0.5 * log_var)) / NATS_PER_BIT
    return torch.where(t == 0, decoder_nll, kl)


class Loss:
    name = "base"
    processes: tuple[str, ...] = ("ddpm",)
    trains_variance = False  # whether this loss gives the variance channels a gradient
    needs_learned_variance = False

    def __call__(
        self, diffusion: Diffusion, model_out: Tensor, x0: Tensor, xt: Tensor, t: Tensor, noise: Tensor
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class SimpleLoss(Loss):
    """λ_t · |target - prediction|² averaged over dimensions (Ho et al.'s L_simple with λ_t = 1)."""

    name = "simple"

    def __init__(self, weighting: Weighting | None = None):
        self.weighting = weighting or UniformWeighting()

    def mse(self, diffusion: Diffusion, model_out: Tensor, x0: Tensor, xt: Tensor, t: Tensor, noise: Tensor):
        mean_out, _ = diffusion.split_output(model_out, x0.shape[1])
        target = diffusion.prediction.target(diffusion.schedule, x0, noise, xt, t)
        return mean_flat((target - mean_out.float()).square())

    def __call__(self, diffusion, model_out, x0, xt, t, noise):
        mse = self.mse(diffusion, model_out, x0, xt, t, noise)
        loss = self.weighting(diffusion, t) * mse
        return {"loss": loss, "mse": mse}


class VLBLoss(Loss):
    """The true variational bound: T · L_t for a uniformly drawn t (an unbiased estimate of Σ_t L_t), bits/dim."""

    name = "vlb"
    trains_variance = True

    def __init__(self, weighting: Weighting | None = None):
        if weighting is not None and not isinstance(weighting, UniformWeighting):
            raise ValueError(
                f"loss=vlb is the true bound and takes no weighting, but weighting={weighting.name} was given; "
                "use weighting=uniform, or loss=simple / loss=hybrid to weight the MSE"
            )

    def __call__(self, diffusion, model_out, x0, xt, t, noise):
        vb = vb_terms_bpd(diffusion, model_out.float(), x0, xt, t)
        return {"loss": vb * diffusion.num_timesteps, "vb": vb}


class HybridLoss(Loss):
    """IDDPM: L_simple + λ · L_vlb, with a stop-gradient on the mean inside the bound so that the bound
    trains only the variance. λ = 0.001 multiplies the full bound (T · L_t)."""

    name = "hybrid"
    trains_variance = True
    needs_learned_variance = True

    def __init__(self, weighting: Weighting | None = None, vlb_weight: float = 0.001):
        self.simple = SimpleLoss(weighting)
        self.vlb_weight = vlb_weight

    def __call__(self, diffusion, model_out, x0, xt, t, noise):
        terms = self.simple(diffusion, model_out, x0, xt, t, noise)
        mean_out, var_out = diffusion.split_output(model_out.float(), x0.shape[1])
        frozen = torch.cat([mean_out.detach(), var_out], dim=1)
        vb = vb_terms_bpd(diffusion, frozen, x0, xt, t)
        terms["vb"] = vb
        terms["loss"] = terms["loss"] + self.vlb_weight * diffusion.num_timesteps * vb
        return terms


class EDMLoss(Loss):
    """Karras et al. 2022, eq. 2 with the preconditioned denoiser (eq. 7): λ(σ)·|D_θ(x_0 + σn; σ) − x_0|²
    averaged over dimensions. The noise levels σ come from the ``timesteps`` option (EDM: log-normal), λ(σ)
    from the ``weighting`` (EDM: (σ² + σ_d²) / (σ·σ_d)², which makes the network's own effective weight
    λ·c_out² = 1); ``mse`` is the denoiser's error in data space."""

    name = "edm"
    processes = ("edm",)

    def __init__(self, weighting: Weighting | None = None):
        self.weighting = weighting or UniformWeighting()

    def __call__(self, process, model_out, x0, xt, t, noise):
        mse = mean_flat((process.denoise(model_out.float(), xt, t) - x0).square())
        return {"loss": self.weighting(process, t) * mse, "mse": mse}


class FlowMatchingLoss(Loss):
    """Conditional flow matching (Lipman et al. 2023; Liu et al. 2022): λ(t)·|v̂_θ(x_t, t) − (ε − x_0)|² averaged
    over dimensions, with t from the ``timesteps`` option (uniform, logit-normal, mode) and λ the ``weighting``."""

    name = "flow"
    processes = ("flow",)

    def __init__(self, weighting: Weighting | None = None):
        self.weighting = weighting or UniformWeighting()

    def __call__(self, process, model_out, x0, xt, t, noise):
        mse = mean_flat((model_out.float() - process.velocity_target(x0, noise)).square())
        return {"loss": self.weighting(process, t) * mse, "mse": mse}


class RestorationLoss(Loss):
    """Cold diffusion's restoration loss: |R(D(x_0, t), t) - x_0| averaged over dimensions (``norm="l1"``, the
    paper's) or its square (``norm="l2"``). The network's output is the restored x̂_0 itself."""

    name = "restoration"
    processes = ("cold",)
    NORMS = ("l1", "l2")

    def __init__(self, weighting: Weighting | None = None, norm: str = "l1"):
        if weighting is not None and not isinstance(weighting, UniformWeighting):
            raise ValueError(
                f"loss=restoration takes no weighting (the weightings are functions of a Gaussian schedule's SNR), "
                f"but weighting={weighting.name} was given; use weighting=uniform"
            )
        if norm not in self.NORMS:
            raise ValueError(f"loss.norm={norm!r} is unknown; choose one of {list(self.NORMS)}")
        self.norm = norm

    def __call__(self, process, model_out, x0, xt, t, noise):
        error = model_out.float() - x0
        l1, mse = mean_flat(error.abs()), mean_flat(error.square())
        return {"loss": l1 if self.norm == "l1" else mse, "l1": l1, "mse": mse}


LOSSES: dict[str, type[Loss]] = {
    "simple": SimpleLoss,
    "vlb": VLBLoss,
    "hybrid": HybridLoss,
    "edm": EDMLoss,
    "flow": FlowMatchingLoss,
    "restoration": RestorationLoss,
}


def build_loss(name: str, **kwargs) -> Loss:
    if name not in LOSSES:
        raise ValueError(f"loss={name!r} is unknown; choose one of {sorted(LOSSES)}")
    return LOSSES[name](**kwargs)


def check_compatible(loss: Loss, diffusion: Diffusion) -> None:
    """Refuse a loss/variance pair that cannot train, naming both options."""
    variance = getattr(diffusion, "variance", None)  # processes other than the Gaussian one have none
    learned = variance is not None and variance.learned
    if loss.needs_learned_variance and not learned:
        raise ValueError(
            f"loss={loss.name} needs a learned variance but variance={getattr(variance, 'name', None)} is fixed; "
            "use variance=learned_range (or learned), or loss=simple"
        )
    if learned and not loss.trains_variance:
        raise ValueError(
            f"loss={loss.name} gives the variance no gradient but variance={diffusion.variance.name} is learned; "
            "use loss=hybrid or loss=vlb, or a fixed variance (fixed_small, fixed_large)"
        )
