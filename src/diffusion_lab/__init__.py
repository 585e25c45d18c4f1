"""diffusion_lab: denoising diffusion experiments with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
