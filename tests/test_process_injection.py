"""The process group: each process receives the built schedule / prediction / variance / degradation it asks for
by name, and so do the parts it is given."""

from __future__ import annotations

import pytest
import torch

from diffusion_lab.diffusion import (
    ColdDiffusion,
    CosineSchedule,
    Diffusion,
    EDMProcess,
    GaussianNoise,
    VPrediction,
)
from diffusion_lab.process_parts import build_process

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
    node = {"_target_": f"{__name__}.ScheduleOnly", "scale": 2.0}
    process = build_process({"schedule": SPEC["schedule"], "process": node})
    assert isinstance(process.schedule, CosineSchedule) and process.scale == 2.0


def test_an_input_the_process_does_not_take_is_refused_unless_it_is_leftover_settings():
    """process/edm.yaml drops schedule / prediction / variance, so one in the spec was set on purpose; a node
    without a _target_ is settings an experiment left behind (`schedule.num_timesteps=...`), not a choice."""
    node = {"_target_": f"{__name__}.ScheduleOnly"}
    with pytest.raises(
        ValueError, match=r"^process=.*ScheduleOnly takes no prediction but prediction=v is set"
    ):
        build_process({**SPEC, "process": node})
    edm = {"_target_": "diffusion_lab.diffusion.EDMProcess"}
    with pytest.raises(
        ValueError, match=r"^process=edm takes no schedule but schedule=cosine is set; drop it"
    ):
        build_process({"schedule": SPEC["schedule"], "process": edm})
    process = build_process({"schedule": {"num_timesteps": 200}, "process": edm})
    assert isinstance(process, EDMProcess)


def test_the_gaussian_process_keeps_the_module_s_discrete_behaviour():
    """What the module asks of a process, for the Gaussian one: validation draws uniform integer timesteps as
    torch.randint did, buckets are (t · 10) // T, the network sees (x_t, t) — the original index when respaced."""
    process = Diffusion(CosineSchedule(50))
    t = torch.arange(50)
    assert torch.equal(process.bucket(t, 10), (t * 10) // 50)
    draw = process.draw_validation_t(64, "cpu", torch.Generator().manual_seed(3))
    assert torch.equal(draw, torch.randint(0, 50, (64,), generator=torch.Generator().manual_seed(3)))
    x = torch.randn(4, 2)
    net_x, net_t = process.net_input(x, t[:4])
    assert net_x is x and net_t is not None and torch.equal(net_t, t[:4])
    spaced = process.respaced(5)
    assert torch.equal(spaced.net_input(x, torch.arange(4))[1], spaced.timestep_map[:4])
    assert process.name == "ddpm" and process.has_likelihood and process.out_channel_factor == 1


COLD = {"_target_": "diffusion_lab.diffusion.ColdDiffusion", "noise_std": 0.0}


def test_cold_diffusion_gets_its_degradation_and_the_degradation_the_schedule():
    spec = {
        "schedule": SPEC["schedule"],
        "process": COLD,
        "degradation": {"_target_": "diffusion_lab.diffusion.GaussianNoise"},
    }
    process = build_process(spec)
    assert isinstance(process, ColdDiffusion) and process.noise_std == 0.0
    assert isinstance(process.degradation, GaussianNoise)
    assert isinstance(process.degradation.schedule, CosineSchedule) and process.num_timesteps == 50


def test_cold_diffusion_leaves_the_schedule_to_its_degradation_and_refuses_a_prediction():
    """process/cold.yaml keeps the schedule group (the gaussian_noise degradation takes it): with another
    degradation it goes unused but is not refused; a prediction, which nothing of cold diffusion takes, is."""
    blur = {"_target_": "diffusion_lab.diffusion.GaussianBlur", "num_timesteps": 7}
    process = build_process({"schedule": SPEC["schedule"], "process": COLD, "degradation": blur})
    assert isinstance(process, ColdDiffusion) and process.num_timesteps == 7
    with pytest.raises(ValueError) as err:
        build_process({**SPEC, "process": COLD, "degradation": blur})
    assert str(err.value) == (
        "process=cold takes no prediction but prediction=v is set; drop it (~prediction where an experiment sets "
        "it) or use process=ddpm"
    )
