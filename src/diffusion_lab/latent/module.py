"""``AutoencoderModule``: the LightningModule that trains the autoencoder of latent diffusion (``task=autoencoder``).

It composes the injected network (``nets/autoencoder.py``) and loss (``autoencoder_loss.py``) and logs; the
optimization policies it shares with the diffusion module are ``NetTraining``'s. Training reconstructs from a
posterior sample (the reparameterisation trick); validation from the posterior mean, the code a latent
diffusion run trains on, and logs ``val/rec_mse`` (per pixel), ``val/psnr`` (dB, images in [-1, 1]: peak-to-peak
2) and ``val/kl`` besides the loss terms. Its checkpoint carries its spec (``task: autoencoder``, the network and
loss configs, the data), which ``build.load_autoencoder`` rebuilds it from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..module import CHECKPOINT_KEY, plain_data
from ..net_training import NetTraining
from ..nonfinite import NonFiniteGuard
from ..rng_state import capture_rng_state, restore_rng_state
from .autoencoder_loss import AutoencoderLoss

__all__ = ["AutoencoderModule", "psnr"]

PEAK_TO_PEAK = 2.0  # images live in [-1, 1]


def psnr(x: Tensor, x_hat: Tensor) -> Tensor:
    """Peak signal-to-noise ratio of each image, in dB, (B,): 10 log10(peak² / MSE)."""
    mse = (x_hat.float() - x.float()).square().flatten(1).mean(1)
    return 10.0 * torch.log10(PEAK_TO_PEAK**2 / mse.clamp(min=1e-12))


class AutoencoderModule(NetTraining):
    def __init__(
        self,
        net: nn.Module,
        loss: AutoencoderLoss,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        data_shape: tuple[int, ...] = (1, 28, 28),
        spec: dict | None = None,
        nonfinite: str = "skip",
    ):
        super().__init__()
        self.net = net
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.data_shape = tuple(data_shape)
        self.spec = spec or {}
        self.nonfinite_guard = NonFiniteGuard(nonfinite)
        self._step_loss: Tensor | None = None
        self._step_terms: dict[str, Tensor] = {}

    @staticmethod
    def _images(batch: Any) -> Tensor:
        return batch[0] if isinstance(batch, list | tuple) else batch

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self._images(batch)
        x_hat, mean, logvar = self.net(x)
        terms = self.loss_fn(x, x_hat, mean, logvar)
        loss = terms["loss"].mean()
        self.nonfinite_guard.step_skipped = False
        self._step_loss, self._step_terms = loss.detach(), {k: v.detach() for k, v in terms.items()}
        if self._should_log():
            for name, value in terms.items():
                self.log(f"train/{name}", value.mean())
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x = self._images(batch)
        x_hat, mean, logvar = self.net(x, sample=False)
        terms = self.loss_fn(x, x_hat, mean, logvar)
        terms["rec_mse"] = (x_hat.float() - x.float()).square().flatten(1).mean(1)
        terms["psnr"] = psnr(x, x_hat)
        for name, value in terms.items():
            self.log(f"val/{name}", value.mean(), prog_bar=name == "loss", sync_dist=True)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Images decoded from their posterior mean, clamped to [-1, 1] (on ``x``'s device)."""
        was_training = self.net.training
        self.net.eval()
        x_hat = self.net(x.to(self.device), sample=False)[0].to(x.device)
        self.net.train(was_training)
        return x_hat.clamp(-1, 1).float()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "spec": plain_data(self.spec),  # loaded with weights_only=True: plain data only
            "skipped_steps": self.nonfinite_guard.fold(),
            "rng": capture_rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get(CHECKPOINT_KEY, {})
        self.nonfinite_guard.skipped_steps = int(extra.get("skipped_steps", 0))
        if extra.get("rng"):
            restore_rng_state(extra["rng"])
