"""Samplers: ancestral DDPM (full or respaced), DDIM(η), and the probability-flow ODE solvers Euler, Heun and
DPM-Solver++(2M) for the Gaussian process; Karras et al.'s Euler / Heun / stochastic samplers for EDM; Euler and
Heun for a flow; cold diffusion's naive and improved samplers. Each takes the model as a callable; ``processes``
names the processes a sampler walks."""

from __future__ import annotations

from .base import Sampler, Trajectory
from .cold import ColdSampler, ImprovedColdSampler, NaiveColdSampler
from .ddim import DDIMSampler
from .ddpm import DDPMSampler
from .edm import EDMEulerSampler, EDMHeunSampler, EDMStochasticSampler
from .flow import FlowEulerSampler, FlowHeunSampler
from .ode import DPMSolverPPSampler, EulerSampler, HeunSampler

SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "dpmpp2m": DPMSolverPPSampler,
    "heun": HeunSampler,
    "euler": EulerSampler,
    "edm_euler": EDMEulerSampler,
    "edm_heun": EDMHeunSampler,
    "edm_stochastic": EDMStochasticSampler,
    "flow_euler": FlowEulerSampler,
    "flow_heun": FlowHeunSampler,
    "cold_naive": NaiveColdSampler,
    "cold_improved": ImprovedColdSampler,
}


def build_sampler(name: str, **kwargs) -> Sampler:
    """``build_sampler("ddim", steps=50, eta=0.0)``; ``build_sampler("ddpm", steps="ddim50")``;
    ``build_sampler("dpmpp2m", steps=20)``."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is unknown; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](**kwargs)


__all__ = [
    "Sampler",
    "Trajectory",
    "DDPMSampler",
    "DDIMSampler",
    "DPMSolverPPSampler",
    "EulerSampler",
    "HeunSampler",
    "EDMEulerSampler",
    "EDMHeunSampler",
    "EDMStochasticSampler",
    "FlowEulerSampler",
    "FlowHeunSampler",
    "ColdSampler",
    "NaiveColdSampler",
    "ImprovedColdSampler",
    "SAMPLERS",
    "build_sampler",
]
