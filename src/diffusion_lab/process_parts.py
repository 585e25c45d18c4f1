"""The diffusion process and the parts that must fit it (loss, weighting, timesteps, sampler), built from a spec
and checked together: the part of the composition root (``build.py``) that needs no data, network or Lightning,
so a training command refuses a combination that cannot train in about as long as torch takes to import, before
Lightning loads and the data is read."""

from __future__ import annotations

import inspect
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from .diffusion import LOSSES, TIMESTEP_SAMPLERS, WEIGHTINGS, Loss
from .diffusion.losses import check_compatible
from .samplers import SAMPLERS, Sampler
from .spec_keys import OPTIONAL_SPEC_KEYS, SPEC_KEYS, task_name

__all__ = ["PROCESS_INPUTS", "build_process", "check_applies", "check_training_parts", "fitting_parts"]


def check_training_parts(cfg: DictConfig) -> None:
    """A training command's process and parts, built from its config and checked as ``build_parts`` will check
    them, before Lightning loads and the data is read: ``loss=hybrid variance=fixed_small`` is refused in the
    time torch takes to import rather than after Lightning's start-up. Not for an autoencoder, which has no
    process."""
    if task_name(cfg) == "autoencoder":
        return
    # The network is built with the data's shape, after the data is read: its settings are checked then.
    keys = [key for key in (*SPEC_KEYS, *OPTIONAL_SPEC_KEYS) if key != "model" and key in cfg]
    fitting_parts({key: OmegaConf.to_container(cfg[key], resolve=True) for key in keys})


def fitting_parts(spec: dict) -> tuple[Any, Loss, Sampler]:
    """The process, loss and sampler of ``spec``, each refused in one line where it does not fit: a loss,
    weighting, timestep sampler or sampler made for another process, a loss that cannot train with the process's
    variance, a sampler whose steps the process cannot take."""
    diffusion = build_process(spec)
    for group in ("loss", "weighting", "timesteps", "sampler"):
        check_applies(get_class(spec[group]["_target_"]), group, diffusion)
    loss = instantiate(spec["loss"], weighting=instantiate(spec["weighting"]))
    check_compatible(loss, diffusion)
    sampler = instantiate(spec["sampler"])
    sampler.num_evaluations(diffusion)  # its steps must fit this process: fails now, not at a preview
    return diffusion, loss, sampler


def _option_name(node: dict) -> str:
    cls = get_class(node["_target_"])
    return getattr(cls, "name", cls.__name__)


# The registries that say which options of a group exist, to name those that fit a process.
_REGISTRIES = {"loss": LOSSES, "weighting": WEIGHTINGS, "timesteps": TIMESTEP_SAMPLERS, "sampler": SAMPLERS}


def check_applies(part: type, group: str, process: Any) -> None:
    """Refuse a part made for another process (``sampler=ddim`` with ``process=edm``) in one line naming both and
    the options that fit. A part (class attribute ``processes``, None: any) or a process (``name``) that does
    not say is not checked."""
    allowed = getattr(part, "processes", None)
    name = getattr(process, "name", None)
    if allowed is None or name is None or name in allowed:
        return
    fitting = [
        option
        for option, cls in _REGISTRIES.get(group, {}).items()
        if getattr(cls, "processes", None) is None or name in cls.processes
    ]
    choose = f"; choose {group}={'|'.join(fitting)}" if fitting else ""
    raise ValueError(
        f"{group}={getattr(part, 'name', part.__name__)} applies to process={'|'.join(allowed)}, not "
        f"process={name}{choose}"
    )


# Groups a process (or a part given to it) may take as constructor arguments: declared once in the config, built
# here, injected.
PROCESS_INPUTS = ("schedule", "prediction", "variance", "degradation")


def build_process(spec: dict):
    """The process (``process`` group; the Gaussian DDPM process by default, also for a checkpoint written
    before the group existed), given the built schedule, prediction, variance or degradation it asks for by name
    (and a part it takes the same way: cold diffusion's gaussian_noise degradation gets the schedule). A group set
    that nothing takes is refused (EDM and flow take none of them: their configs drop them), unless the process
    leaves it to its parts (``inputs_for_parts``: cold's schedule, unused by the degradations other than noise)."""
    node = spec.get("process") or {"_target_": "diffusion_lab.diffusion.Diffusion"}
    taken: set[str] = set()
    process = _build_with_inputs(node, spec, taken)
    given = [k for k in PROCESS_INPUTS if "_target_" in (spec.get(k) or {}) and k not in node]
    unused = [k for k in given if k not in taken and k not in getattr(process, "inputs_for_parts", ())]
    if unused:
        k, name = unused[0], getattr(process, "name", node["_target_"])
        raise ValueError(
            f"process={name} takes no {k} but {k}={_option_name(spec[k])} is set; drop it (~{k} where an "
            "experiment sets it) or use process=ddpm"
        )
    return process


def _build_with_inputs(node: dict, spec: dict, taken: set[str]):
    """``node`` built with the parts of ``spec`` its constructor names (PROCESS_INPUTS) and ``node`` does not
    set, each built the same way (cold diffusion's gaussian_noise degradation takes the schedule); the groups
    taken are added to ``taken``."""
    factory = instantiate(node, _partial_=True)
    accepted = inspect.signature(factory).parameters
    # A node without a _target_ is settings an experiment left for an option not chosen (as for lr_scheduler).
    given = [k for k in PROCESS_INPUTS if "_target_" in (spec.get(k) or {}) and k not in node]
    inputs = {k: _build_with_inputs(spec[k], spec, taken) for k in given if k in accepted}
    taken.update(inputs)
    return factory(**inputs)
