"""Every option of every config group composes and instantiates; impossible combinations fail at start-up.

Options are read from the conf/<group>/ folders, so a new option is covered without touching this file.
"""

from __future__ import annotations

import copy
import itertools

import lightning as L
import pytest
import torch
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import (
    TINY_MODEL,
    compose_train,
    config_groups,
    group_options,
    option_processes,
    process_options,
    write_fake_cifar,
    write_fake_idx_root,
    write_image_folder,
)
from diffusion_lab.build import OPTIONAL_SPEC_KEYS, SPEC_KEYS, build_module, build_parts, make_spec
from diffusion_lab.data import DiffusionDataModule
from diffusion_lab.diffusion import ColdDiffusion, Diffusion, Loss, NoiseSchedule, TimestepSampler
from diffusion_lab.errors import root_cause
from diffusion_lab.samplers import Sampler

pytestmark = pytest.mark.usefixtures("one_thread")

LEARNED = {"learned", "learned_range"}
# The diffusion parts are what vary here: the smallest network will do.
TINY_MLP = ["model=mlp", "model.hidden=8", "model.num_layers=1", "model.time_embed_dim=8"]


def cold_only(group: str, option: str) -> bool:
    """Options made for process=cold (which degrades images: built on images by test_every_cold_part_builds):
    the process, its degradations, and the parts whose class names only process "cold"."""
    if group in ("process", "degradation"):
        return group == "degradation" or option == "cold"
    return group in PART_GROUPS and option_processes(group, option) == ("cold",)


def valid_combination(loss: str, variance: str, weighting: str) -> bool:
    """The rule the library enforces: hybrid needs a learned variance, a learned variance needs a loss that
    trains it (hybrid or vlb), and the true bound (vlb) takes no weighting."""
    if loss == "hybrid" and variance not in LEARNED:
        return False
    if variance in LEARNED and loss not in ("hybrid", "vlb"):
        return False
    return not (loss == "vlb" and weighting != "uniform")


def partners(group: str, option: str) -> list[str]:
    """Overrides that make ``group=option`` a valid combination with the rest of the defaults: a part of EDM, a
    flow or cold diffusion comes with its process (which brings that process's other defaults), and so does a
    degradation (cold's)."""
    if group == "degradation":
        return ["process=cold"]
    processes = option_processes(group, option) if group in PART_GROUPS else None
    if processes is not None and "ddpm" not in processes:
        return [f"process={processes[0]}"]
    if group == "variance" and option in LEARNED:
        return ["loss=hybrid"]
    if group == "loss" and option == "hybrid":
        return ["variance=learned_range"]
    return []


# The groups whose parts name the processes they apply to.
PART_GROUPS = ("loss", "weighting", "timesteps", "sampler")


def dropped_by(process: str) -> set[str]:
    """The groups a process's config drops: EDM and flow take no schedule / prediction / variance; cold keeps
    the schedule (its gaussian_noise degradation takes it)."""
    return {"ddpm": set(), "cold": {"prediction", "variance"}}.get(
        process, {"schedule", "prediction", "variance"}
    )


# ------------------------------------------------------------------------------------------ composition
@pytest.mark.parametrize(
    "group,option", [(g, o) for g in config_groups() if g != "hydra" for o in group_options(g)]
)
def test_every_option_composes_and_resolves(group, option, tmp_path):
    overrides = [f"{group}={option}", *partners(group, option)]
    if group == "data" and option == "image_folder":
        overrides.append(f"data.root={tmp_path}")
    cfg = compose_train(overrides, tmp_path)
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert container["paths"]["output_dir"] == str(tmp_path)
    process = cfg.process._target_.rsplit(".", 1)[-1]
    names = {"Diffusion": "ddpm", "EDMProcess": "edm", "FlowProcess": "flow", "ColdDiffusion": "cold"}
    dropped = dropped_by(names[process])
    for key in SPEC_KEYS:
        if key in dropped:
            assert key not in container, key
        else:
            assert "_target_" in container[key], key
    for key in OPTIONAL_SPEC_KEYS:
        assert key not in container or "_target_" in container[key], key
    if process == "ColdDiffusion":  # it brings its degradation
        assert "_target_" in container["degradation"]


def test_unknown_option_lists_the_choices():
    with pytest.raises(MissingConfigException) as err:
        compose_train(["schedule=foo"])
    message = str(err.value)
    assert "schedule/foo" in message
    for option in group_options("schedule"):
        assert option in message


# ------------------------------------------------------------------------- diffusion parts via build_parts
@pytest.fixture(scope="module")
def base_spec():
    """A spec of the default config with a tiny network (only the diffusion parts vary below)."""
    cfg = compose_train(TINY_MLP)
    return make_spec(cfg, (2,), None)


def option_node(group: str, option: str) -> dict:
    return OmegaConf.to_container(compose_train([f"{group}={option}"])[group], resolve=True)


def the_part(parts, group: str):
    if group == "process":
        return parts.diffusion
    if group in ("schedule", "prediction", "variance"):
        return getattr(parts.diffusion, group)
    if group == "weighting":
        return (parts.loss.simple if hasattr(parts.loss, "simple") else parts.loss).weighting
    return {"loss": parts.loss, "timesteps": parts.timesteps, "sampler": parts.sampler}[group]


@pytest.mark.parametrize(
    "group,option",
    [
        (g, o)
        for g in SPEC_KEYS
        if g != "model"  # the networks: test_every_model_instantiates_and_forwards
        for o in group_options(g)
        if not cold_only(g, o)  # test_every_cold_part_builds
    ],
)
def test_every_diffusion_part_builds(group, option):
    cfg = compose_train([f"{group}={option}", *partners(group, option), *TINY_MLP])
    parts = build_parts(make_spec(cfg, (2,), None))
    assert isinstance(parts.loss, Loss)
    assert isinstance(parts.timesteps, TimestepSampler)
    assert isinstance(parts.sampler, Sampler)
    part = the_part(parts, group)
    assert type(part).__name__ == cfg[group]._target_.rsplit(".", 1)[-1]
    for kind in (parts.loss, parts.timesteps, parts.sampler):  # every part fits the process it was built with
        assert type(kind).processes is None or parts.diffusion.name in type(kind).processes
    if isinstance(parts.diffusion, Diffusion):
        assert isinstance(parts.diffusion.schedule, NoiseSchedule)
        assert parts.timesteps.num_timesteps == parts.diffusion.num_timesteps == cfg.schedule.num_timesteps

    # One loss evaluation on a network output of the right shape (2 x channels when the variance is learned),
    # as the module makes it: corrupt through the process, call the network on its net_input.
    x0 = torch.randn(4, 2)
    t, weights = parts.timesteps.sample(4)
    noise = torch.randn_like(x0)
    xt = parts.diffusion.corrupt(x0, t, noise)
    out = parts.net(*parts.diffusion.net_input(xt, t))
    assert out.shape == (4, 2 * parts.diffusion.out_channel_factor)
    terms = parts.loss(parts.diffusion, out, x0, xt, t, noise)
    assert terms["loss"].shape == (4,) and torch.isfinite(terms["loss"]).all()
    assert weights.shape == (4,) and torch.isfinite(weights).all()


@pytest.mark.parametrize(
    "group,option,process",
    [
        (g, o, p)
        for g in PART_GROUPS
        for o in group_options(g)
        for p in ("ddpm", "edm", "flow", "cold")
        if option_processes(g, o) is not None and p not in option_processes(g, o)
    ],
)
def test_a_part_of_another_process_is_refused_in_one_line(group, option, process):
    """`sampler=ddim process=edm`, `sampler=edm_heun` (with ddpm), `timesteps=importance process=flow`, ...:
    refused when the parts are built (train start-up), naming the option, the process and the options that fit."""
    cfg = compose_train([f"process={process}", f"{group}={option}", *TINY_MLP])
    with pytest.raises(ValueError) as err:
        build_parts(make_spec(cfg, (2,), None))
    message = str(err.value)
    allowed = "|".join(option_processes(group, option))
    head = f"{group}={option} applies to process={allowed}, not process={process}; choose {group}="
    assert message.startswith(head), message
    assert set(message[len(head) :].split("|")) == set(process_options(group, process))


@pytest.mark.parametrize(
    "group,process",
    [
        (g, p)
        for p in ("edm", "flow", "cold")
        for g in ("schedule", "prediction", "variance")
        if g in dropped_by(p)
    ],
)
def test_a_group_the_process_does_not_take_is_refused(group, process):
    """process/edm.yaml, flow.yaml and cold.yaml drop these groups; one set explicitly is refused, naming it."""
    option = {"schedule": "cosine", "prediction": "v", "variance": "fixed_large"}[group]
    cfg = compose_train([f"process={process}", f"{group}={option}", *TINY_MLP])
    with pytest.raises(ValueError, match=rf"^process={process} takes no {group} but {group}={option} is set"):
        build_parts(make_spec(cfg, (2,), None))


@pytest.mark.parametrize(
    "group,option",
    [("process", "cold")]
    + [(g, o) for g in ("degradation", "loss", "sampler") for o in group_options(g) if cold_only(g, o)],
)
def test_every_cold_part_builds(group, option):
    """process=cold with each degradation, loss and sampler made for it: built from the config, one loss
    evaluation on 8x8 images, a prior fitted and a sample drawn."""
    overrides = [f"{group}={option}", *partners(group, option), "model=unet_tiny", *TINY_MODEL["UNet"]]
    cfg = compose_train([*overrides, "schedule.num_timesteps=10", "sampler.steps=3"])
    parts = build_parts(make_spec(cfg, (1, 8, 8), None))
    assert isinstance(parts.diffusion, ColdDiffusion)
    part = {"process": parts.diffusion, "degradation": parts.diffusion.degradation}.get(group)
    part = part or {"loss": parts.loss, "sampler": parts.sampler}[group]
    assert type(part).__name__ == cfg[group]._target_.rsplit(".", 1)[-1]
    assert (
        parts.timesteps.num_timesteps
        == parts.diffusion.num_timesteps
        == parts.diffusion.degradation.num_timesteps
    )

    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    t, _ = parts.timesteps.sample(4)
    noise = torch.randn_like(x0)
    out = parts.net(parts.diffusion.corrupt(x0, t, noise), t)
    assert out.shape == x0.shape
    terms = parts.loss(parts.diffusion, out, x0, parts.diffusion.corrupt(x0, t, noise), t, noise)
    assert terms["loss"].shape == (4,) and torch.isfinite(terms["loss"]).all()
    parts.diffusion.fit_prior(x0)
    with torch.no_grad():
        x = parts.sampler.sample(
            parts.diffusion, parts.net, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0)
        )
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


@pytest.mark.parametrize(
    "loss,variance,weighting",
    list(itertools.product(*(process_options(g, "ddpm") for g in ("loss", "variance", "weighting")))),
)
def test_loss_variance_weighting_combinations(base_spec, loss, variance, weighting, _option_nodes):
    spec = copy.deepcopy(base_spec)
    spec["loss"] = _option_nodes["loss", loss]
    spec["variance"] = _option_nodes["variance", variance]
    spec["weighting"] = _option_nodes["weighting", weighting]
    if valid_combination(loss, variance, weighting):
        parts = build_parts(spec)
        assert parts.net(torch.randn(3, 2), torch.zeros(3, dtype=torch.long)).shape[1] == (
            4 if variance in LEARNED else 2
        )
        return
    with pytest.raises(Exception) as err:
        build_parts(spec)
    cause = root_cause(err.value)
    assert isinstance(cause, ValueError), repr(err.value)
    message = str(cause)
    assert "\n" not in message.strip()
    assert f"loss={loss}" in message
    other = f"weighting={weighting}" if loss == "vlb" else f"variance={variance}"
    assert other in message, message


@pytest.fixture(scope="module")
def _option_nodes():
    return {(g, o): option_node(g, o) for g in ("loss", "variance", "weighting") for o in group_options(g)}


# ------------------------------------------------------------------------------------------------ models
def model_data_shape(option: str, target: str) -> tuple[int, ...]:
    if target == "MLPDenoiser":
        return (2,)
    if target == "DiT":
        return (3, 8, 8)  # patch 2 -> a 4x4 grid: the full-width network, on few tokens
    return (3, 32, 32) if "cifar" in option else (1, 28, 28)


@pytest.mark.parametrize("option", group_options("model"))
def test_every_model_instantiates_and_forwards(option):
    cfg = compose_train([f"model={option}"])
    target = cfg.model._target_.rsplit(".", 1)[-1]
    shape = model_data_shape(option, target)
    parts = build_parts(make_spec(cfg, shape, num_classes=10))
    net = parts.net.eval()
    assert type(net).__name__ == target
    x = torch.randn(1, *shape)
    with torch.no_grad():
        out = net(x, torch.tensor([7]), torch.tensor([3]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


# -------------------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    return {
        "cifar10": str(write_fake_cifar(base / "cifar")),
        "image_folder": str(write_image_folder(base / "images")),
        "mnist": str(write_fake_idx_root(base / "mnist")),
    }


@pytest.mark.parametrize("option", group_options("data"))
def test_every_data_option_instantiates_and_loads(option, data_roots, tmp_path):
    overrides = [f"data={option}", "++data.limit_train=8", "++data.val_size=4", "data.batch_size=4"]
    overrides += ["++data.num_workers=0", "++data.pin_memory=false"]
    if option in data_roots:
        overrides.append(f"data.root={data_roots[option]}")
    cfg = compose_train(overrides, tmp_path)
    dm = instantiate(cfg.data)
    assert isinstance(dm, DiffusionDataModule)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert tuple(x.shape) == (4, *dm.data_shape)
    if dm.is_image:
        assert x.min() >= -1 and x.max() <= 1
    assert y.shape == (4,)


# ---------------------------------------------------------------- trainer / logger / callbacks / optim
@pytest.mark.parametrize("option", group_options("trainer"))
def test_every_trainer_option_instantiates(option, tmp_path):
    cfg = compose_train([f"trainer={option}"], tmp_path)
    overrides = {}
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        overrides["accelerator"] = "cpu"  # the config is still checked by Lightning, on the CPU
    trainer = instantiate(cfg.trainer, callbacks=[], logger=False, **overrides)
    assert isinstance(trainer, L.Trainer)
    assert trainer.max_steps == cfg.trainer.max_steps
    assert trainer.default_root_dir == str(tmp_path)


@pytest.mark.parametrize("option", group_options("logger"))
def test_every_logger_option_instantiates(option, tmp_path, wandb_offline):
    cfg = compose_train([f"logger={option}"], tmp_path)
    loggers = {name: instantiate(node) for name, node in (cfg.logger or {}).items()}
    for name, logger in loggers.items():
        assert isinstance(logger, L.pytorch.loggers.Logger), name
        assert str(tmp_path) in str(logger.save_dir), name
    if option != "none":
        assert option in loggers


@pytest.mark.parametrize("option", group_options("callbacks"))
def test_every_callbacks_option_instantiates(option, tmp_path):
    cfg = compose_train([f"callbacks={option}"], tmp_path)
    # As train() does: nodes without a _target_ are settings an experiment left for a callback not chosen.
    callbacks = {name: instantiate(node) for name, node in cfg.callbacks.items() if "_target_" in node}
    assert all(isinstance(c, L.Callback) for c in callbacks.values())
    # Every run checkpoints into its own directory, whatever the callbacks option.
    assert callbacks["checkpoint"].dirpath == str(tmp_path / "checkpoints")
    if "ema" in callbacks:  # the EMA must come before anything that samples (it swaps the average in)
        assert list(callbacks).index("ema") < list(callbacks).index("sample_grid")


@pytest.mark.parametrize("option", group_options("optimizer"))
def test_every_optimizer_option_instantiates(option):
    cfg = compose_train([f"optimizer={option}", "lr_scheduler=none", *TINY_MLP])
    optimizer = build_module(cfg, (2,), None).configure_optimizers()
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert type(optimizer).__name__ == cfg.optimizer._target_.rsplit(".", 1)[-1]
    assert optimizer.param_groups[0]["lr"] == cfg.optimizer.lr


@pytest.mark.parametrize("option", group_options("lr_scheduler"))
def test_every_lr_scheduler_option_instantiates(option):
    # With an experiment that sets lr_scheduler.warmup_steps, also left over for lr_scheduler=none.
    cfg = compose_train(["experiment=fmnist_cpu", f"lr_scheduler={option}", *TINY_MLP])
    configured = build_module(cfg, (2,), None).configure_optimizers()
    if option == "none":
        assert isinstance(configured, torch.optim.Optimizer)
        return
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    assert configured["lr_scheduler"]["interval"] == "step"
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert 0.0 < optimizer.param_groups[0]["lr"] <= cfg.optimizer.lr


def test_hybrid_loss_brings_a_learned_variance_unless_one_is_given():
    """`loss=hybrid` alone selects variance=learned_range (IDDPM), so the README's sweep
    `loss=simple,hybrid,vlb` composes and builds for every job; an explicit fixed variance still wins and is then
    refused at start-up naming both options."""
    cfg = compose_train(["loss=hybrid"])
    assert cfg.variance._target_.endswith("LearnedRangeVariance")
    build_parts(make_spec(cfg, (1, 28, 28), None))
    for loss in ("simple", "vlb"):
        assert compose_train([f"loss={loss}"]).variance._target_.endswith("FixedSmallVariance")
    cfg = compose_train(["loss=hybrid", "variance=fixed_small"])
    with pytest.raises(ValueError, match="loss=hybrid.*variance=fixed_small"):
        build_parts(make_spec(cfg, (1, 28, 28), None))
