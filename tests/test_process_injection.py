"""The process group: each process receives the built schedule / prediction / variance it asks for by name."""

from __future__ import annotations

import pytest

from diffusion_lab.build import build_process
from diffusion_lab.diffusion import CosineSchedule, Diffusion, EDMProcess, VPrediction

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
