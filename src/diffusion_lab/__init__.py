"""diffusion_lab: denoising diffusion experiments with PyTorch Lightning and Hydra."""

from .resolvers import register_resolvers

__version__ = "0.1.0"

register_resolvers()
