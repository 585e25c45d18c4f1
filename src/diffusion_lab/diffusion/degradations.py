"""Degradations for cold diffusion (Bansal et al. 2022): image transforms D(x_0, t) at levels t = 0 .. T-1.

Level 0 is the mildest (close to the identity) and level T-1 the fully degraded image; level -1, the clean image,
is the process's business (``ColdDiffusion.corrupt``), not the degradation's. Images are (B, C, H, W) and t is
(B,) integer levels. Every degradation here is linear in x_0 (the noise aside), which is what the improved
sampler's argument rests on.

Each also says what of x_0 survives full degradation: ``summary(x_0)`` (B, d) and ``from_summary(z, shape)``
with D(x_0, T-1) ≈ D(from_summary(summary(x_0)), T-1). The prior of generation is fitted to these summaries.

    blur = GaussianBlur(num_timesteps=50)
    xt = blur(x0, t)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .gaussian import q_sample
from .parameterizations import eps_from_x0
from .schedules import NoiseSchedule

__all__ = [
    "Degradation",
    "GaussianBlur",
    "SquareMask",
    "Downsample",
    "GaussianNoise",
    "DEGRADATIONS",
    "build_degradation",
]

# The share of the slowest spatial mode the fully blurred image keeps when sigma_max is chosen automatically.
FULL_BLUR_RESIDUAL = 1e-3


class Degradation:
    """D(x_0, t, noise) at levels t = 0 .. num_timesteps - 1."""

    name = "base"
    stochastic = False  # whether D uses its noise argument

    def __init__(self, num_timesteps: int):
        if int(num_timesteps) < 1:
            raise ValueError(
                f"degradation.num_timesteps={num_timesteps!r} is invalid: it must be an integer >= 1"
            )
        self.num_timesteps = int(num_timesteps)

    def __call__(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def implied_noise(self, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor | None:
        """The noise with D(x0, t, noise) = xt: a sampler degrades its estimate x̂_0 with it (None when D is
        deterministic)."""
        return None

    def summary(self, x0: Tensor) -> Tensor:
        """What survives full degradation, (B, d): the per-channel means by default."""
        return x0.flatten(2).mean(dim=2)  # (B, C)

    def from_summary(self, z: Tensor, shape: tuple[int, ...]) -> Tensor:
        """An image of ``shape`` (B, C, H, W) with summary z: each channel filled with its mean."""
        return z[:, :, None, None].expand(shape).contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


# ------------------------------------------------------------------------------------------------------ blur
def dct_matrix(n: int, device: torch.device | str = "cpu") -> Tensor:
    """The orthonormal DCT-II matrix (n, n), float64: row k is the cosine of angular frequency πk/n per pixel."""
    k = torch.arange(n, dtype=torch.float64, device=device)[:, None]
    i = torch.arange(n, dtype=torch.float64, device=device)[None, :]
    basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] = math.sqrt(1.0 / n)
    return basis


class GaussianBlur(Degradation):
    """Deblurring: level t blurs x_0 once with a Gaussian of std σ_t pixels, σ_t growing geometrically from
    ``sigma_min`` (t = 0) to ``sigma_max`` (t = T-1).

    The blur is applied exactly in the DCT domain (a Gaussian with reflecting boundaries): each cosine mode of
    angular frequency ω is scaled by exp(-σ² ω² / 2). Two blurs compose into one of std sqrt(σ₁² + σ₂²), so
    level t, one blur of std σ_t (what is computed), is also level t-1 blurred by std sqrt(σ_t² - σ_{t-1}²): the
    paper's view of a blur applied cumulatively. The mean (the DC mode) is kept and every other mode fades: the fully blurred image is
    its per-channel mean, the summary the prior models. ``sigma_max: None`` picks, per image size, the σ at
    which the slowest mode keeps ``FULL_BLUR_RESIDUAL`` of itself.
    """

    name = "gaussian_blur"

    def __init__(self, num_timesteps: int = 50, sigma_min: float = 0.5, sigma_max: float | None = None):
        super().__init__(num_timesteps)
        if not sigma_min > 0 or (sigma_max is not None and not sigma_max > sigma_min):
            raise ValueError(
                f"degradation.sigma_min={sigma_min!r} / sigma_max={sigma_max!r} are invalid: they must satisfy "
                "0 < sigma_min < sigma_max (or sigma_max: null for a full blur)"
            )
        self.sigma_min = float(sigma_min)
        self.sigma_max = None if sigma_max is None else float(sigma_max)

    def sigmas(self, size: int) -> Tensor:
        """σ_t of every level (T,), float64, for images whose longer side is ``size`` pixels."""
        top = self.sigma_max
        if top is None:  # exp(-σ² (π/size)² / 2) = residual for the slowest mode
            top = size / math.pi * math.sqrt(2.0 * math.log(1.0 / FULL_BLUR_RESIDUAL))
        top = max(top, self.sigma_min)
        if self.num_timesteps == 1:
            return torch.tensor([top], dtype=torch.float64)
        steps = torch.arange(self.num_timesteps, dtype=torch.float64) / (self.num_timesteps - 1)
        return self.sigma_min * (top / self.sigma_min) ** steps

    def __call__(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        t = t.long()
        H, W = x0.shape[-2:]
        sigma = self.sigmas(max(H, W)).to(x0.device)[t]  # (B,)
        # float64 throughout: a sampler subtracts two blurs of the same image, and TF32 matmuls would not do
        ch, cw = dct_matrix(H, x0.device), dct_matrix(W, x0.device)
        wy = torch.arange(H, dtype=torch.float64, device=x0.device) * math.pi / H
        wx = torch.arange(W, dtype=torch.float64, device=x0.device) * math.pi / W
        omega2 = wy[:, None] ** 2 + wx[None, :] ** 2  # (H, W)
        gain = torch.exp(-0.5 * sigma[:, None, None] ** 2 * omega2)  # (B, H, W)
        coefficients = ch @ x0.double() @ cw.T  # (B, C, H, W) in the DCT basis
        return (ch.T @ (coefficients * gain[:, None]) @ cw).to(x0.dtype)


# ------------------------------------------------------------------------------------------------------ mask
class SquareMask(Degradation):
    """Inpainting: a centred square grows with t until it covers the image at t = T-1; its side is (t+1)/T of
    the image's. Its edge is anti-aliased (a pixel is masked by the share of it the square covers), so every
    level differs from the next and the masked fraction is exactly ((t+1)/T)².

    Masked pixels take the image's own per-channel mean, not zero: the fully masked image is then that mean,
    a C-dimensional summary of x_0 a prior can be fitted to and sampled from (with zeros every x_T would be the
    same black image, and generation would have one start). Mean and mask make D linear in x_0.
    """

    name = "mask"

    def __init__(self, num_timesteps: int = 50):
        super().__init__(num_timesteps)

    def masked(self, t: Tensor, H: int, W: int) -> Tensor:
        """The masked share of every pixel, (B, 1, H, W) in [0, 1]."""
        half = (t.double() + 1) / self.num_timesteps / 2  # half the side, as a share of the image, (B,)
        return (_covered(half, H, t.device)[:, :, None] * _covered(half, W, t.device)[:, None, :])[:, None]

    def __call__(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        t = t.long()
        masked = self.masked(t, *x0.shape[-2:]).to(x0.dtype)
        mean = x0.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        return x0 + masked * (mean - x0)


def _covered(half: Tensor, n: int, device: torch.device) -> Tensor:
    """The share of each of n pixel cells [i, i+1) covered by the centred interval n/2 ± half·n, (B, n)."""
    edges = torch.arange(n + 1, dtype=torch.float64, device=device)
    lo, hi = n / 2 - half[:, None] * n, n / 2 + half[:, None] * n  # (B, 1)
    return (torch.minimum(edges[1:], hi) - torch.maximum(edges[:-1], lo)).clamp(0, 1)


# ------------------------------------------------------------------------------------------------ downsample
class Downsample(Degradation):
    """Super-resolution: level t averages x_0 over blocks of ``factor``^(t+1) pixels (area downsampling to
    size / factor^(t+1), rounded) and upsamples back by repeating each average (nearest). Where the factors
    divide the image size (28 -> 14 -> 7 -> 4, 32 -> 16 -> 8 -> 4), every level is the orthogonal projection
    onto block-constant images, so each level loses more than the one before. What survives is the smallest
    image (its C · h · w values are the summary)."""

    name = "downsample"

    def __init__(self, num_timesteps: int = 3, factor: int = 2):
        super().__init__(num_timesteps)
        if int(factor) < 2:
            raise ValueError(f"degradation.factor={factor!r} is invalid: it must be an integer >= 2")
        self.factor = int(factor)

    def size(self, level: int, H: int, W: int) -> tuple[int, int]:
        """(h, w) of the downsampled image at ``level``."""
        shrink = self.factor ** (level + 1)
        return max(1, round(H / shrink)), max(1, round(W / shrink))

    def __call__(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        t = t.long()
        H, W = x0.shape[-2:]
        out = torch.empty_like(x0)
        for level in t.unique().tolist():
            rows = t == level
            small = F.adaptive_avg_pool2d(x0[rows], self.size(level, H, W))
            out[rows] = F.interpolate(small, size=(H, W), mode="nearest")
        return out

    def summary(self, x0: Tensor) -> Tensor:
        h, w = self.size(self.num_timesteps - 1, *x0.shape[-2:])
        return F.adaptive_avg_pool2d(x0, (h, w)).flatten(1)  # (B, C·h·w)

    def from_summary(self, z: Tensor, shape: tuple[int, ...]) -> Tensor:
        B, C, H, W = shape
        h, w = self.size(self.num_timesteps - 1, H, W)
        return F.interpolate(z.reshape(B, C, h, w), size=(H, W), mode="nearest")


# -------------------------------------------------------------------------------------------------- noise
class GaussianNoise(Degradation):
    """The Gaussian special case: D(x_0, t, ε) = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, exactly ``q_sample`` of the
    ``schedule`` group (injected, so T = schedule.num_timesteps). A sampler degrades its x̂_0 with the ε implied
    by (x̂_0, x_t); the improved sampler is then DDIM with η = 0."""

    name = "gaussian_noise"
    stochastic = True

    def __init__(self, schedule: NoiseSchedule):
        super().__init__(schedule.num_timesteps)
        self.schedule = schedule

    def __call__(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            raise ValueError("degradation=gaussian_noise needs the noise ε to degrade with")
        return q_sample(self.schedule, x0, t, noise)

    def implied_noise(self, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        return eps_from_x0(self.schedule, xt, x0, t)

    def __repr__(self) -> str:
        return f"GaussianNoise({self.schedule!r})"


DEGRADATIONS: dict[str, type[Degradation]] = {
    "gaussian_blur": GaussianBlur,
    "mask": SquareMask,
    "downsample": Downsample,
    "gaussian_noise": GaussianNoise,
}


def build_degradation(name: str, **kwargs) -> Degradation:
    """``build_degradation("gaussian_blur", num_timesteps=20)``; gaussian_noise takes ``schedule=``."""
    if name not in DEGRADATIONS:
        raise ValueError(f"degradation={name!r} is unknown; choose one of {sorted(DEGRADATIONS)}")
    return DEGRADATIONS[name](**kwargs)
