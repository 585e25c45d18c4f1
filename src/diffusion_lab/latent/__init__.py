"""Latent diffusion (Rombach et al. 2022): the diffusion process runs in the latent space of an autoencoder.

    autoencoder_loss.py   the autoencoder's loss: reconstruction + small KL weight (per-sample terms)
    module.py             ``AutoencoderModule``: the LightningModule that trains it (``task=autoencoder``)
    encode.py             a dataset encoded once, cached on disk; LDM's scale factor (1/std of the latents)
    datamodule.py         ``LatentDataModule``: any pixel datamodule seen through the encoder (``autoencoder=PATH``)
    decoder.py            ``LatentDecoder`` and ``sample_images``: samples back to pixels, for every command

The network is ``nets/autoencoder.py`` (it knows nothing of diffusion); ``build.py`` composes the parts.
"""

from __future__ import annotations

from diffusion_lab.latent.autoencoder_loss import AutoencoderLoss, gaussian_kl
from diffusion_lab.latent.decoder import LatentDecoder, sample_images, sampler_for

__all__ = ["AutoencoderLoss", "LatentDecoder", "gaussian_kl", "sample_images", "sampler_for"]
