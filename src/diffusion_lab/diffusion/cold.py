"""``ColdDiffusion`` (Bansal et al. 2022, "Cold Diffusion: Inverting Arbitrary Image Transforms Without Noise").

A degradation D(x_0, t) (blur, a growing mask, downsampling, or Gaussian noise as the special case) and a
network trained to restore x_0 from D(x_0, t) (``RestorationLoss``). Generation starts from a prior of the fully
degraded image, a Gaussian mixture fitted to what survives full degradation of training images (per-channel means
for blur and mask, as the paper did), and walks the levels back (``samplers/cold.py``).

It is a ``Process`` (process_base.py) on integer levels 0 .. T-1 with no likelihood, whose ``state_dict`` is the
fitted prior, plus ``fit_prior(images)`` (training calls it before the first step), ``prior_sample`` and
``implied_noise`` for the samplers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .degradations import Degradation
from .prior import GaussianMixturePrior
from .process_base import Process

__all__ = ["ColdDiffusion"]


class ColdDiffusion(Process):
    name = "cold"
    has_likelihood = False
    out_channel_factor = 1  # the network outputs x̂_0, one channel per data channel
    inputs_for_parts = ("schedule",)  # the gaussian_noise degradation takes it; the others leave it unused

    def __init__(
        self,
        degradation: Degradation,
        prior_components: int = 10,
        prior_images: int = 10000,
        noise_std: float = 0.002,
        prior_seed: int = 0,
    ):
        if int(prior_components) < 1 or int(prior_images) < 1 or float(noise_std) < 0:
            raise ValueError(
                f"process.prior_components={prior_components!r}, prior_images={prior_images!r}, "
                f"noise_std={noise_std!r}: the counts must be >= 1 and the std >= 0"
            )
        self.degradation = degradation
        self.prior_components = int(prior_components)
        self.prior_images = int(prior_images)
        self.noise_std = float(noise_std)
        self.prior_seed = int(prior_seed)
        self.prior = GaussianMixturePrior()

    @property
    def num_timesteps(self) -> int:
        return self.degradation.num_timesteps

    def corrupt(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """D(x_0, t) at levels t (B,); level -1 is x_0 itself (where a sampler's last step lands)."""
        degraded = self.degradation(x0, t.clamp(min=0), noise)
        clean = (t < 0).reshape(-1, *(1,) * (x0.ndim - 1))
        return torch.where(clean, x0, degraded)

    def implied_noise(self, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor | None:
        """The noise that degrades x0 to xt at level t (None for a deterministic degradation)."""
        return self.degradation.implied_noise(x0, xt, t)

    # ------------------------------------------------------------------ the prior of x_T
    def fit_prior(self, images: Tensor) -> None:
        """Fit the prior to the summaries of training images (N, C, H, W) in [-1, 1]."""
        if images.ndim != 4:
            raise ValueError(
                f"process=cold degrades images (C, H, W); this data's items have shape {tuple(images.shape[1:])}"
            )
        self.prior.fit(self.degradation.summary(images), self.prior_components, self.prior_seed)

    def prior_sample(self, noise: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A start x_T of noise's shape: a prior draw made an image and degraded to level T-1 (with ``noise``
        for a stochastic degradation), plus ``noise_std`` · noise for a deterministic one. That small
        perturbation breaks the determinism: otherwise the samples of a deterministic restorer vary only with
        the prior's few numbers per image (C per-channel means for blur and mask)."""
        B = noise.shape[0]
        z = self.prior.sample(B, generator, device=noise.device).to(noise.dtype)
        level = torch.full((B,), self.num_timesteps - 1, device=noise.device, dtype=torch.long)
        x = self.degradation(self.degradation.from_summary(z, tuple(noise.shape)), level, noise)
        return x if self.degradation.stochastic else x + self.noise_std * noise

    def state_dict(self) -> dict[str, Tensor]:
        return self.prior.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.prior.load_state_dict(state)

    def __repr__(self) -> str:
        return f"ColdDiffusion({self.degradation!r}, {self.prior!r}, noise_std={self.noise_std})"
