"""The process group: each process receives the built schedule / prediction / variance / degradation it asks for
by name, and so do the parts it is given."""

from __future__ import annotations

from diffusion_lab.build import build_process
from diffusion_lab.diffusion import ColdDiffusion, CosineSchedule, Diffusion, GaussianNoise, VPrediction

SPEC = {
    "schedule": {"_target_": "diffusion_lab.diffusion.CosineSchedule", "num_timesteps": 50},
    "prediction": {"_target_": "diffusion_lab.diffusion.VPrediction"},
    "variance": {"_target_": "diffusion_lab.diffusion.FixedLargeVariance"},
}


class ScheduleOnly:
    def __init__(self, schedule, scale: float = 1.0):
        self.schedule, self.scale = schedule, scale


def test_the_gaussian_process_is_built_from_the_groups_declared_once():
    process = build_process({**SPEC, "process": {"_target_": "diffusion_lab.diffusion.Diffusion"}})
    assert isinstance(process, Diffusion) and process.num_timesteps == 50
    assert isinstance(process.schedule, CosineSchedule) and isinstance(process.prediction, VPrediction)
    assert process.variance.name == "fixed_large"


def test_a_spec_without_a_process_is_the_gaussian_process_of_its_groups():
    process = build_process(dict(SPEC))  # checkpoints written before the process group
    assert isinstance(process, Diffusion) and isinstance(process.prediction, VPrediction)


def test_a_process_gets_only_the_inputs_it_names_and_keeps_its_own_settings():
    process = build_process({**SPEC, "process": {"_target_": f"{__name__}.ScheduleOnly", "scale": 2.0}})
    assert isinstance(process.schedule, CosineSchedule) and process.scale == 2.0


def test_cold_diffusion_gets_its_degradation_and_the_degradation_the_schedule():
    spec = {
        **SPEC,
        "process": {"_target_": "diffusion_lab.diffusion.ColdDiffusion", "noise_std": 0.0},
        "degradation": {"_target_": "diffusion_lab.diffusion.GaussianNoise"},
    }
    process = build_process(spec)
    assert isinstance(process, ColdDiffusion) and process.noise_std == 0.0
    assert isinstance(process.degradation, GaussianNoise)
    assert isinstance(process.degradation.schedule, CosineSchedule) and process.num_timesteps == 50
