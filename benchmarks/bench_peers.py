"""The peer systems of ``python -m diffusion_lab.bench``: other libraries' implementations of the same network
and workloads, measured beside ours in one process. ``diffusion_lab.bench`` loads this file only when
``--systems`` names a peer; the peers' libraries are the bench extra (``pip install -e .[bench]``).

    diffusers   ``diffusers.UNet2DModel`` configured as Ho et al.'s CIFAR-10 network (as google/ddpm-cifar10-32),
                trained with diffusers' training-script recipe (``DDPMScheduler.add_noise`` + MSE on ε) and
                sampled with ``DDIMScheduler``
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.bench import Model, System

__all__ = ["DIFFUSERS", "PEERS", "diffusers_ho_unet"]


def diffusers_ho_unet() -> nn.Module:
    """diffusers' UNet2DModel configured as Ho et al.'s CIFAR-10 network (as google/ddpm-cifar10-32)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        dropout=0.1,
        attention_head_dim=None,
        norm_num_groups=32,
    )


def _train_loss(model: Model, device: torch.device) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """diffusers' training-script recipe."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")

    def loss(x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        xt = scheduler.add_noise(x0, noise, t)
        return F.mse_loss(model(xt, t).float(), noise)

    return loss


def _ddim(model: Model, shape: tuple, steps: int, device: torch.device) -> Callable[[], None]:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    scheduler.set_timesteps(steps)

    def run() -> None:
        x = torch.randn(shape, device=device)
        for t in scheduler.timesteps:
            eps = model(x, t.to(device).expand(shape[0]))
            x = scheduler.step(eps.float(), t, x, eta=0.0).prev_sample

    return run


DIFFUSERS = System("diffusers", diffusers_ho_unet, lambda net, x, t: net(x, t).sample, _train_loss, _ddim)
PEERS = {p.name: p for p in (DIFFUSERS,)}
