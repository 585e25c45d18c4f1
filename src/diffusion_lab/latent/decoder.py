"""From what a sampler returns to images: the one place every command turns samples into images.

``sample_images`` is called by ``DiffusionModule.generate`` (training previews, sample-quality metrics, final
samples), ``sampling.draw`` and ``evaluation.make_generate``. For a pixel-space model it runs the sampler and
clamps to [-1, 1]. For a latent model (Rombach et al. 2022) it also decodes: the sampler walks the latent space,
never clipping x̂_0 to [-1, 1] (that is a prior on pixels; latents scaled to unit variance routinely leave that
range, so ``clip_denoised`` is off there whatever the sampler's config says), and the frozen decoder maps the
latents back to pixels, which are then clamped, so every metric scores images exactly as for a pixel model.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn

from ..diffusion.schedules import build_schedule

__all__ = ["LatentDecoder", "sample_images", "sampler_for", "unclipped_eps_problem", "warn_unclipped_eps"]

# An ε-network's x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t multiplies its error by 1/√ᾱ_t, and the first sampling
# steps start at the schedule's last ᾱ. On pixels clipping x̂_0 to [-1, 1] bounds the damage; on latents nothing
# does: below this ᾱ_T (the cosine schedule's is 2.4e-9) deterministic samplers turn a 1e-3 error of ε̂ into one
# of about 0.3 in the sample (tests/test_unclipped_sampling.py), and decoded samples are blobs.
TINY_LAST_ALPHA_BAR = 1e-6


class LatentDecoder(nn.Module):
    """The frozen decoder of an autoencoder, seen from the diffusion side: ``forward(z)`` takes latents scaled
    by ``scale_factor`` (LDM's 1/std of the training latents, which gives the diffusion unit-variance data),
    unscales and decodes them to images (not clamped)."""

    def __init__(self, decoder: nn.Module, scale_factor: float):
        super().__init__()
        # Its mode follows the module holding it (Lightning warns of modules left in eval mode for training);
        # forward decodes in eval mode regardless.
        self.net = decoder.train().requires_grad_(False)
        self.scale_factor = float(scale_factor)

    def forward(self, z: Tensor) -> Tensor:
        # Always in eval mode (dropout off), whatever mode the module holding it is in.
        was_training = self.net.training
        self.net.eval()
        x = self.net(z / self.scale_factor)
        self.net.train(was_training)
        return x


def unclipped_eps_problem(diffusion) -> str | None:
    """Why sampling ``diffusion`` without clipping x̂_0 is unstable (ε-prediction on a schedule whose last ᾱ is
    below TINY_LAST_ALPHA_BAR), with what to choose instead; None where it is not."""
    prediction = getattr(getattr(diffusion, "prediction", None), "name", None)
    schedule = getattr(diffusion, "schedule", None)
    if prediction != "eps" or schedule is None:
        return None
    last = float(schedule.alphas_cumprod[-1])
    if last >= TINY_LAST_ALPHA_BAR:
        return None
    steps = len(schedule.alphas_cumprod)
    linear = float(build_schedule("linear", steps).alphas_cumprod[-1])
    return (
        f"prediction=eps on a schedule whose last ᾱ is {last:.2g}: without clipping (latents) the first sampling "
        f"steps multiply ε̂'s error by up to 1/√ᾱ = {last**-0.5:.3g}; use prediction=v, or a schedule whose last "
        f"ᾱ is at least {TINY_LAST_ALPHA_BAR:g} (schedule=linear over {steps} steps: {linear:.2g})"
    )


def warn_unclipped_eps(diffusion) -> None:
    """Warn, once per run, where a latent model's diffusion is one ``unclipped_eps_problem`` names."""
    problem = unclipped_eps_problem(diffusion)
    if problem:
        warnings.warn(problem, UserWarning, stacklevel=2)


def sampler_for(sampler, decoder: LatentDecoder | None):
    """The sampler as it runs for a model: unchanged for a pixel model; for a latent model (``decoder`` given)
    a copy that never clips x̂_0 to [-1, 1]. Commands that report their sampler call this first, so what they
    record is what ran."""
    if decoder is None or not getattr(sampler, "clip_denoised", False):
        return sampler
    sampler = copy.copy(sampler)
    sampler.clip_denoised = False
    return sampler


@torch.no_grad()
def sample_images(
    sampler,
    diffusion,
    model,
    noise: Tensor,
    generator: torch.Generator | None = None,
    progress: bool = False,
    decoder: LatentDecoder | None = None,
) -> Tensor:
    """Images in [-1, 1] (float32, on ``noise``'s device) sampled from ``noise`` with ``sampler`` and ``model``;
    decoded first when ``decoder`` is given (the decoder runs in float32, outside any autocast)."""
    sampler = sampler_for(sampler, decoder)
    x = sampler.sample(
        diffusion, model, noise.shape, noise.device, noise=noise, generator=generator, progress=progress
    )
    if decoder is not None:
        with torch.autocast(noise.device.type, enabled=False):
            x = decoder(x.float())
    return x.clamp(-1, 1).float()
