"""Bits per dimension from the full variational bound: every L_t over all T steps plus the prior term.

This is improved-diffusion's ``calc_bpd_loop``: for data on 256 levels scaled to [-1, 1],

    bpd(x_0) = Σ_{t=1..T} L_{t-1}(x_0)  +  KL(q(x_T | x_0) || N(0, I)),    each term in bits per dimension,

with one x_t ~ q(x_t | x_0) drawn per t (an unbiased single-sample estimate of each KL).

Two bounds, both valid: with ``clip_denoised=True`` (the default, as improved-diffusion's ``image_nll.py`` runs
it) the predicted x_0 is clipped to [-1, 1] before it makes the reverse mean μ_θ, which enters the KL terms and
the decoder NLL (and the ε / x_0 errors reported beside them); the prior term does not involve the network.
``clip_denoised=False`` is the bound of the network as trained, whose expectation the one-timestep estimate
``bound_estimate_bpd`` (validation's ``val/bpd_one_t_mc``) estimates.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .gaussian import mean_flat, prior_bpd, q_sample
from .losses import vb_terms_bpd
from .process import Diffusion, ModelFn

__all__ = ["calc_bpd_loop", "bound_estimate_bpd"]


@torch.no_grad()
def calc_bpd_loop(
    diffusion: Diffusion,
    model: ModelFn,
    x0: Tensor,
    progress: bool = False,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
) -> dict[str, Tensor]:
    """Returns ``total_bpd`` (B,), ``prior_bpd`` (B,), ``vb`` (B, T) per-t terms in bits/dim, ``mse`` (B, T)
    of the predicted ε, and ``x0_mse`` (B, T); ``clip_denoised``: see the module docstring."""
    B, T = x0.shape[0], diffusion.num_timesteps
    vb, mse, x0_mse = (torch.zeros(B, T, device=x0.device) for _ in range(3))
    for i in tqdm(range(T - 1, -1, -1), desc="bits/dim", disable=not progress, leave=False):
        t = torch.full((B,), i, device=x0.device, dtype=torch.long)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        xt = q_sample(diffusion.schedule, x0, t, noise)
        out = diffusion.call_model(model, xt, t).float()
        vb[:, i] = vb_terms_bpd(diffusion, out, x0, xt, t, clip_denoised)
        pred = diffusion.denoise(out, xt, t, clip_denoised)
        mse[:, i] = mean_flat((pred.pred_eps - noise) ** 2)
        x0_mse[:, i] = mean_flat((pred.pred_x0 - x0) ** 2)
    prior = prior_bpd(diffusion.schedule, x0)
    return {"total_bpd": vb.sum(dim=1) + prior, "prior_bpd": prior, "vb": vb, "mse": mse, "x0_mse": x0_mse}


def bound_estimate_bpd(diffusion: Diffusion, vb: Tensor, x0: Tensor) -> Tensor:
    """T · L_t + prior for one uniformly drawn t per image: an unbiased one-timestep Monte-Carlo estimate of the
    unclipped full bound's bits/dim (validation's ``val/bpd_one_t_mc``; ``calc_bpd_loop`` computes every term).
    One image's value is very noisy: only its mean over many images and draws of t approaches the bound."""
    return diffusion.num_timesteps * vb + prior_bpd(diffusion.schedule, x0)
