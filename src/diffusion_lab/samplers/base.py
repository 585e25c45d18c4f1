"""The sampler interface: a sampler walks a (possibly respaced) ``Diffusion`` backwards from noise.

    x = sampler.sample(diffusion, model, shape=(64, 1, 28, 28), device="cuda")

``model(x_t, t)`` is any callable returning the network's raw output; samplers respace the process
themselves (``steps``) and hand the network the original timestep indices. ``sample`` is the same for every
sampler: it draws the noise, makes it the start state (``start``) and walks it to clean data (``walk``, by
default one ``step`` per kept timestep), with the progress bar and the trajectory (``solve``). The samplers of
cold diffusion, EDM and a flow (cold.py, edm.py, flow.py) are ``GridSampler``s: their ``walk`` goes along their
own grid of levels, σ or t on the process as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..diffusion.process import DenoiserOutput, Diffusion, ModelFn
from ..diffusion.process_base import Process

__all__ = ["Sampler", "GridSampler", "Trajectory"]

OnStep = Callable[[int, float, Tensor, Tensor], None]  # on_step(i, level_i, x_{i+1}, x̂_0 at the step's input)


@dataclass
class Trajectory:
    """Per-step states for visualisation, one entry per kept step (in sampling order): ``timesteps[i]`` (the
    original index the network saw; EDM's σ_i, a flow's t_i), ``pred_x0[i]`` (its x̂_0 at the step's input) and
    ``xt[i]`` (the state after the step, i.e. the next step's input; the last is the sample); ``start`` is the first
    step's input."""

    start: Tensor | None = None
    timesteps: list[int | float] = field(default_factory=list)
    xt: list[Tensor] = field(default_factory=list)
    pred_x0: list[Tensor] = field(default_factory=list)

    def record(self, t: int | float, xt: Tensor, pred_x0: Tensor) -> None:
        self.timesteps.append(t)
        self.xt.append(xt.detach().cpu())
        self.pred_x0.append(pred_x0.detach().cpu())


class Sampler:
    name = "base"
    processes: tuple[str, ...] = ("ddpm",)  # the processes it walks (build refuses it with another)
    # Whether ``step`` takes fresh noise: the default ``solve`` draws it from the generator only when True.
    stochastic = True

    def __init__(self, steps: int | str | None = None, clip_denoised: bool = True):
        self.steps = steps
        self.clip_denoised = clip_denoised

    def step(
        self, diffusion: Diffusion, out: DenoiserOutput, x: Tensor, t: Tensor, i: int, noise: Tensor
    ) -> Tensor:
        """x_t -> x_{t-1} given the denoiser output at (x, t); ``i`` is the position in the respaced grid."""
        raise NotImplementedError

    def num_evaluations(self, diffusion: Diffusion) -> int:
        """Network evaluations of one ``sample`` call (one per kept step for the single-step samplers)."""
        return diffusion.respaced(self.steps).num_timesteps

    @torch.no_grad()
    def sample(
        self,
        diffusion: Process,
        model: ModelFn,
        shape: tuple[int, ...],
        device: torch.device | str = "cpu",
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        return_trajectory: bool = False,
    ) -> Tensor | tuple[Tensor, Trajectory]:
        """Samples of ``shape``: ``noise`` ~ N(0, I) (fresh noise drawn with ``generator`` when None) made the
        start state (``start``), then walked to clean data (``walk``); with ``return_trajectory`` also the
        per-step states (one entry per step)."""
        process = self.walked(diffusion)
        noise = torch.randn(shape, device=device, generator=generator) if noise is None else noise.to(device)
        x = self.start(process, noise, generator)
        trajectory = Trajectory(start=x.detach().cpu()) if return_trajectory else None
        x = self.solve(process, model, x, generator=generator, progress=progress, trajectory=trajectory)
        return (x, trajectory) if return_trajectory else x

    def walked(self, diffusion: Diffusion) -> Diffusion:
        """The process ``solve`` walks: the diffusion respaced to ``steps``."""
        return diffusion.respaced(self.steps)

    def start(self, process: Process, noise: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The state the walk starts from, given standard normal ``noise``: x at the largest kept timestep."""
        return noise

    def num_steps(self, process: Process) -> int:
        """Steps of one walk of ``process`` (what ``walked`` returned): the progress bar's length."""
        return process.num_timesteps

    def solve(
        self,
        process: Process,
        model: ModelFn,
        x: Tensor,
        generator: torch.Generator | None = None,
        progress: bool = False,
        trajectory: Trajectory | None = None,
    ) -> Tensor:
        """``walk`` from x to clean data, advancing the progress bar and recording the trajectory at each step."""
        steps = self.num_steps(process)
        with tqdm(total=steps, desc=f"{self.name} sampling", disable=not progress, leave=False) as bar:

            def on_step(i: int, level: int | float, x: Tensor, pred_x0: Tensor) -> None:
                bar.update()
                if trajectory is not None:
                    trajectory.record(level, x, pred_x0)

            return self.walk(process, model, x, generator, on_step)

    def walk(
        self, spaced: Diffusion, model: ModelFn, x: Tensor, generator: torch.Generator | None, on_step: OnStep
    ) -> Tensor:
        """From x at the last position of the respaced process down to clean data, with ``on_step(i, t_i, x_{i+1},
        x̂_0)`` after each step (t_i the original timestep index the network saw).

        The default is one network evaluation and one ``step`` per position (fresh noise for every step but
        the last, for a ``stochastic`` sampler). Samplers that need more than the current evaluation (multistep
        or multi-stage ODE solvers) override this.
        """
        for i in self.positions(spaced):
            out = self.evaluate(spaced, model, x, i)
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            draw = self.stochastic and i > 0
            step_noise = torch.randn(x.shape, device=x.device, generator=generator) if draw else None
            x = self.step(spaced, out, x, t, i, step_noise)
            on_step(i, self.timestep(spaced, i), x, out.pred_x0)
        return x

    @staticmethod
    def positions(spaced: Diffusion) -> range:
        """The positions i = n-1 .. 0 of the respaced grid."""
        return range(spaced.num_timesteps - 1, -1, -1)

    @staticmethod
    def timestep(spaced: Diffusion, i: int) -> int:
        """The original timestep index at position ``i`` of the respaced grid (what the network sees)."""
        return int(spaced.model_timesteps(torch.tensor([i], dtype=torch.long)).item())

    def evaluate(self, spaced: Diffusion, model: ModelFn, x: Tensor, i: int) -> DenoiserOutput:
        """The denoiser at (x, position i) of the respaced grid (one network evaluation)."""
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        return spaced.p_mean_variance(model, x, t, clip_denoised=self.clip_denoised)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class GridSampler(Sampler):
    """A sampler that walks its own grid of levels (cold diffusion's levels, EDM's σ, a flow's t) on the process
    as it is, where ``Sampler`` walks a respaced ``Diffusion``; subclasses give the ``walk``, calling
    ``on_step(i, level_i, x_{i+1}, x̂_0)`` after each step."""

    # Heun's correction on every step but the last (into clean data): 2·steps − 1 network evaluations.
    second_order = False

    def walked(self, diffusion: Process) -> Process:
        return diffusion

    def num_steps(self, process: Process | None = None) -> int:
        return self.steps

    def num_evaluations(self, process: Process | None = None) -> int:
        steps = self.num_steps(process)
        return 2 * steps - 1 if self.second_order else steps

    def walk(self, process, model, x, generator, on_step):
        raise NotImplementedError
