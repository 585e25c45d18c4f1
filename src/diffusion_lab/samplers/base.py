"""The sampler interface: a sampler walks a (possibly respaced) ``Diffusion`` backwards from noise.

    x = sampler.sample(diffusion, model, shape=(64, 1, 28, 28), device="cuda")

``model(x_t, t)`` is any callable returning the network's raw output; samplers respace the process
themselves (``steps``) and hand the network the original timestep indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..diffusion.process import DenoiserOutput, Diffusion, ModelFn

__all__ = ["Sampler", "Trajectory"]


@dataclass
class Trajectory:
    """Per-step states for visualisation: ``timesteps[i]`` (original index), ``xt[i]`` and ``pred_x0[i]``."""

    timesteps: list[int] = field(default_factory=list)
    xt: list[Tensor] = field(default_factory=list)
    pred_x0: list[Tensor] = field(default_factory=list)

    def record(self, t: int, xt: Tensor, pred_x0: Tensor) -> None:
        self.timesteps.append(t)
        self.xt.append(xt.detach().cpu())
        self.pred_x0.append(pred_x0.detach().cpu())


class Sampler:
    name = "base"

    def __init__(self, steps: int | str | None = None, clip_denoised: bool = True):
        self.steps = steps
        self.clip_denoised = clip_denoised

    def step(
        self, diffusion: Diffusion, out: DenoiserOutput, x: Tensor, t: Tensor, i: int, noise: Tensor
    ) -> Tensor:
        """x_t -> x_{t-1} given the denoiser output at (x, t); ``i`` is the position in the respaced grid."""
        raise NotImplementedError

    def num_evaluations(self, diffusion: Diffusion) -> int:
        return diffusion.respaced(self.steps).num_timesteps

    @torch.no_grad()
    def sample(
        self,
        diffusion: Diffusion,
        model: ModelFn,
        shape: tuple[int, ...],
        device: torch.device | str = "cpu",
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        return_trajectory: bool = False,
    ) -> Tensor | tuple[Tensor, Trajectory]:
        spaced = diffusion.respaced(self.steps)
        x = torch.randn(shape, device=device, generator=generator) if noise is None else noise.to(device)
        trajectory = Trajectory()
        n = spaced.num_timesteps
        for i in tqdm(range(n - 1, -1, -1), desc=f"{self.name} sampling", disable=not progress, leave=False):
            t = torch.full((shape[0],), i, device=x.device, dtype=torch.long)
            out = spaced.p_mean_variance(model, x, t, clip_denoised=self.clip_denoised)
            step_noise = torch.randn(x.shape, device=x.device, generator=generator) if i > 0 else None
            x = self.step(spaced, out, x, t, i, step_noise)
            if return_trajectory:
                trajectory.record(int(spaced.model_timesteps(t[:1]).item()), x, out.pred_x0)
        return (x, trajectory) if return_trajectory else x

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"
