"""The autoencoder's training loss: reconstruction + a small KL weight (LDM's KL-f first stage).

    terms = loss_fn(x, x_hat, mean, logvar)    # per-sample (B,) terms: loss, rec, kl

Both terms are *summed* over their dimensions (pixels, latent elements) and kept per sample, as LDM's
``LPIPSWithDiscriminator`` sums them before averaging over the batch, so ``kl_weight=1e-6`` weighs the KL
against the reconstruction exactly as it does there.

LDM adds two more terms, neither of which is here: a perceptual (LPIPS) distance, which needs VGG weights
downloaded from the internet, and a patch-GAN term, which needs its own discriminator, optimizer and start
schedule (it is switched on only after the reconstruction has converged, with an adaptive weight). Without
them the default trains offline and stably; on small grey images L1 + KL alone reconstructs well.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["AutoencoderLoss", "gaussian_kl", "RECONSTRUCTIONS"]

RECONSTRUCTIONS = ("l1", "l2")


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) of a diagonal Gaussian, summed over all but the batch dim, (B,)."""
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1)


class AutoencoderLoss:
    """``rec`` = Σ |x - x̂| (l1) or Σ (x - x̂)² (l2) over pixels, ``kl`` = KL of the posterior to N(0, I),
    ``loss`` = rec + kl_weight · kl; each (B,)."""

    def __init__(self, reconstruction: str = "l1", kl_weight: float = 1.0e-6):
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(
                f"task.loss.reconstruction={reconstruction!r} is unknown; choose one of {list(RECONSTRUCTIONS)}"
            )
        if kl_weight < 0:
            raise ValueError(f"task.loss.kl_weight={kl_weight} must be >= 0")
        self.reconstruction = reconstruction
        self.kl_weight = float(kl_weight)

    def __call__(self, x: Tensor, x_hat: Tensor, mean: Tensor, logvar: Tensor) -> dict[str, Tensor]:
        diff = x_hat.float() - x.float()
        per_pixel = diff.abs() if self.reconstruction == "l1" else diff.square()
        rec = per_pixel.flatten(1).sum(1)
        kl = gaussian_kl(mean.float(), logvar.float())
        return {"loss": rec + self.kl_weight * kl, "rec": rec, "kl": kl}

    def __repr__(self) -> str:
        return f"AutoencoderLoss(reconstruction={self.reconstruction!r}, kl_weight={self.kl_weight})"
