"""experiment=fmnist_fast's network (conf/model/unet_small.yaml) built for Fashion-MNIST's 28x28x1 images.

Shared by the benchmark scripts that measure that network outside the training loop, so each builds it from the
config the training run reads rather than its own copy of the settings.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from diffusion_lab.nets import UNet

CONFIG = Path(__file__).resolve().parents[1] / "conf" / "model" / "unet_small.yaml"


def unet_small(**overrides) -> UNet:
    """The UNet as the config declares it for 28x28x1 images; ``overrides`` replace config keys (dropout, ...)."""
    spec = OmegaConf.to_container(OmegaConf.load(CONFIG), resolve=True)
    spec.pop("_target_", None)
    return UNet(**{**spec, "in_channels": 1, "image_size": 28, **overrides})
