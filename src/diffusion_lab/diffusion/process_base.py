"""The process interface: what the LightningModule, ``build`` and the commands ask of a forward process.

A process turns clean data into the network's training input at a noise level ``t`` and says how the network is
called there. The module holds no math: it draws ``t`` with the timestep sampler, corrupts through the process,
calls the network on ``net_input`` and hands the raw output to the loss. The defaults below are those of a
discrete-time process on integer timesteps 0 .. num_timesteps - 1 (the Gaussian ``Diffusion``); continuous-time
processes (EDM's σ, a flow's t in [0, 1]) override the three that read ``t``.

    name                     the process's option name (conf/process/<name>.yaml); parts name the processes they
                             apply to (``processes``) and ``build`` refuses a part made for another one
    corrupt(x0, t, noise)    the network's training input at level t
    net_input(x, t)          what the network is called with at (x, t): (x, t) unless the process preconditions
    draw_validation_t(n, device, generator)   a fixed reference draw of levels for validation
    bucket(t, num_buckets)   which of ``num_buckets`` noise-level bins t falls in (0: least noise), for the logs
    has_likelihood           whether the variational bound (bits/dim) exists
    out_channel_factor       network output channels per data channel (2 when a variance is learned)
    inputs_for_parts         injected groups the process does not take itself but leaves to the parts it takes
                             (cold diffusion: the schedule, for its gaussian_noise degradation); ``build``
                             refuses any other group set that nothing takes
    state_dict / load_state_dict   anything fitted from data, stored in checkpoints
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Process"]


class Process:
    name = "base"
    has_likelihood = False
    out_channel_factor = 1
    inputs_for_parts: tuple[str, ...] = ()
    num_timesteps: int

    def corrupt(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        raise NotImplementedError

    def net_input(self, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return xt, t

    def draw_validation_t(
        self, n: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> Tensor:
        """Uniform over the timesteps, whatever the training sampler: validation losses stay comparable."""
        return torch.randint(0, self.num_timesteps, (n,), device=device, generator=generator)

    def bucket(self, t: Tensor, num_buckets: int) -> Tensor:
        return (t * num_buckets) // self.num_timesteps

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"process={self.name} holds no fitted state, got {sorted(state)}")
