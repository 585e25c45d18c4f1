"""One training run from a composed config: start-up checks, the parts built, Lightning's fit, the final
samples and checkpoint, the closing summary. ``python -m diffusion_lab.train`` is its command line; it imports
this module (Lightning, torch, the networks: most of a start-up's seconds) only once the command line has
composed, so that a mistyped option is refused before them."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from .build import CheckpointError, build_datamodule, build_module
from .callbacks import FinalCheckpoint, LossProgressBar, Preemption, Throughput
from .callbacks.preemption import StoppedBySignal
from .capture import check_capture
from .checkpointing import (
    AtomicCheckpointIO,
    BackgroundCheckpointIO,
    load_checkpoint_file,
    newest_good_checkpoint,
    trained_step,
    verify_checkpoint,
)
from .compile_policy import (
    CAPTURE,
    COMPILE_SCOPES,
    compile_mode,
    compile_stats,
    use_compile_cache,
    use_torch_ptxas,
)
from .config_checks import check_values
from .errors import UserError
from .io import save_grid, save_samples_npz
from .metrics_csv import CSVLogger
from .module import CHECKPOINT_KEY
from .nonfinite import NONFINITE_POLICIES
from .overrides import override_key
from .resume import check_new_run_dir, continue_run, record_run
from .run_lock import run_lock
from .run_status import recorded_run

__all__ = ["train"]


def resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """``ckpt_path``: null (fresh run), ``last`` (the newest whole checkpoint of the run being resumed), or a path.

    ``last`` takes the furthest trained of ``checkpoints/last*.ckpt`` and ``checkpoints/step_*.ckpt`` (the
    newest of equals) that passes ``verify_checkpoint``: if ``last.ckpt`` was cut short (a full disk, a file copied while
    written) or a kill fell between a step checkpoint and last.ckpt, it says so in one line and uses the newest
    good one. An explicit path that is not a whole checkpoint is an error.
    """
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, "", "null"):
        return None
    if ckpt == "last":
        run_dir = Path(cfg.get("resume_dir") or output_dir)
        folder = run_dir / "checkpoints"
        last = folder / "last.ckpt"
        chosen, skipped = newest_good_checkpoint(folder) if folder.is_dir() else (None, [])
        if chosen is None:
            if skipped:
                why = "; ".join(f"{p.name}: {problem}" for p, problem in skipped[:3])
                raise CheckpointError(
                    f"ckpt_path=last: no whole checkpoint in {folder} ({why}); pass ckpt_path=<file.ckpt>"
                )
            raise UserError(
                f"ckpt_path=last: no checkpoint at {last}; set resume_dir=<the run directory to continue> "
                "or ckpt_path=<file.ckpt>"
            )
        if chosen.name != last.name or skipped:
            if skipped:
                why = ", ".join(
                    f"{p.name} is {problem}" if problem == "missing" else f"{p.name}: {problem}"
                    for p, problem in skipped
                )
            elif not last.exists():
                why = "last.ckpt is missing"
            else:
                why = further_or_newer(chosen, last)
            if rank_zero_only.rank == 0:
                print(f"ckpt_path=last: resuming from {chosen} ({why})", file=sys.stderr, flush=True)
        return str(chosen)
    if not Path(ckpt).is_file():
        raise UserError(f"ckpt_path={ckpt!r} does not exist; pass a .ckpt file, 'last', or null")
    problem = verify_checkpoint(ckpt)
    if problem is not None:
        raise CheckpointError(f"ckpt_path={ckpt!r} cannot be resumed from: {problem}")
    return str(ckpt)


def further_or_newer(chosen: Path, last: Path) -> str:
    """Why ``chosen``, a step checkpoint, was taken over a whole ``last``: it holds a later step (a kill between
    the two writes), or the same one written later."""
    step, last_step = trained_step(chosen), trained_step(last)
    if step > last_step:
        return f"it holds step {int(step)}, {last.name} step {int(last_step)}"
    return f"it is newer than {last.name}"


def check_resume_compatible(module: L.LightningModule, ckpt_path: str) -> int:
    """A checkpoint of another network (other model / data options) fails here in one line, not in
    ``load_state_dict`` with a page of mismatched keys. Returns the checkpoint's step."""
    ckpt = load_checkpoint_file(ckpt_path, mmap=True, option="ckpt_path")
    stored = ckpt.get("state_dict", {}) if isinstance(ckpt, dict) else {}
    own = module.state_dict()
    missing = [k for k in own if k not in stored]
    unexpected = [k for k in stored if k not in own]
    shapes = [k for k in own if k in stored and tuple(stored[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return int(ckpt.get("global_step", 0))
    spec = (ckpt.get(CHECKPOINT_KEY) or {}).get("spec", {}) if isinstance(ckpt, dict) else {}
    trained = str((spec.get("model") or {}).get("_target_", "?")).rsplit(".", 1)[-1]
    if shapes:
        k = shapes[0]
        detail = f"{k} is {list(stored[k].shape)} there, {list(own[k].shape)} here"
    else:
        detail = f"{len(missing)} parameter(s) missing, {len(unexpected)} unexpected"
    raise CheckpointError(
        f"ckpt_path={ckpt_path!r} holds another network ({trained}, data shape {spec.get('data_shape', '?')}: "
        f"{detail}); resume with the model and data options it was trained with"
    )


def check_output_dir(output_dir: Path) -> None:
    """Fail before any training if the run directory cannot be written."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"the output directory {output_dir} is not writable ({err.strerror}); set paths.root_dir"
        ) from None


CHECKPOINT_WRITES = ("background", "foreground")


def check_config(cfg: DictConfig) -> None:
    """Start-up checks of values that no part checks itself: one line naming the key, before any work."""
    check_values(cfg)
    for key, allowed, default in (
        ("nonfinite", NONFINITE_POLICIES, "skip"),
        ("checkpoint_writes", CHECKPOINT_WRITES, "background"),
        ("compile_scope", COMPILE_SCOPES, "net"),  # checked when compiling too; here also when compile=false
    ):
        value = cfg.get(key, default)
        if value not in allowed:
            raise UserError(f"{key}={value!r} is invalid; choose one of {list(allowed)}")
    if compile_mode(cfg.get("compile")) == CAPTURE:  # before anything is written; the module checks again
        accelerator = str(cfg.trainer.get("accelerator", "auto"))
        cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
        check_capture(cuda, 1, int(cfg.trainer.get("accumulate_grad_batches", 1)))


def read_data_early(datamodule: L.LightningDataModule) -> None:
    """Read the training data before the Trainer exists, so that a missing, empty or unreadable dataset (or a
    batch larger than it) is one error line, not Lightning's start-up banners followed by it. On rank 0 only:
    the other processes wait in Lightning's own ``prepare_data`` (which may be downloading); the datasets are
    cached, so Lightning's ``setup`` does not read them again."""
    if rank_zero_only.rank != 0:
        return
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.train_dataloader()  # checks the batch size against the training set
    datamodule.dataset("train")[0]  # decodes one item: a folder of unreadable images fails here


def fit_process_to_data(process: Any, datamodule: L.LightningDataModule) -> None:
    """What a process fits to the training data (cold diffusion's prior of the fully degraded image), fitted
    before the Trainer exists: every DDP process fits the same (the first images, a fixed seed), and a resumed
    run then restores the one stored in its checkpoint (``DiffusionModule.on_load_checkpoint``)."""
    fit = getattr(process, "fit_prior", None)
    if fit is not None:
        fit(datamodule.real_images("train", process.prior_images))


def _output_dir(cfg: DictConfig) -> Path:
    try:
        return Path(cfg.paths.output_dir)
    except Exception:  # composed outside @hydra.main (tests) without an output_dir
        return Path(HydraConfig.get().runtime.output_dir)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build everything from ``cfg``, fit, write final samples; returns the paths and final metrics."""
    started = time.time()
    cfg, resume_overrides = continue_run(cfg)
    check_config(cfg)
    output_dir = _output_dir(cfg)
    check_new_run_dir(output_dir, cfg.get("ckpt_path"))
    ckpt_path = resolve_ckpt_path(cfg, output_dir)
    check_output_dir(output_dir)
    with run_lock(output_dir):  # one training at a time in a run folder
        record_run(cfg, output_dir, resume_overrides)
        max_steps = cfg.trainer.get("max_steps") if not cfg.trainer.get("fast_dev_run") else None
        with recorded_run(output_dir, max_steps, resume_command(output_dir)) as outcome:
            outcome.result = _fit(cfg, output_dir, ckpt_path, started)
        return outcome.result


def _fit(cfg: DictConfig, output_dir: Path, ckpt_path: str | None, started: float) -> dict[str, Any]:
    """Fit the run in ``output_dir`` (from ``ckpt_path`` when it continues one), write its final samples and
    summary; returns the paths and final metrics."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    datamodule = build_datamodule(cfg)  # with autoencoder=PATH: the data's latents
    read_data_early(datamodule)
    num_classes = datamodule.num_classes if cfg.get("conditional") else None
    latent = datamodule if cfg.get("autoencoder") else None
    module = build_module(cfg, datamodule.data_shape, num_classes, latent=latent)
    if getattr(module, "compile_mode", None):
        use_compile_cache(cfg.get("compile_cache"))
        use_torch_ptxas()
    if hasattr(module, "diffusion"):
        if latent is not None and module.diffusion.name != "ddpm":
            raise UserError(
                f"autoencoder= (latent diffusion) runs process=ddpm; process={module.diffusion.name} is not "
                "supported on latents yet: drop autoencoder= or use process=ddpm"
            )
        fit_process_to_data(module.diffusion, datamodule)
    resumed_step = check_resume_compatible(module, ckpt_path) if ckpt_path is not None else None
    trainer, callbacks, loggers = build_trainer(cfg, resumed_step)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    result = fit_result(trainer, module, callbacks, output_dir, started)
    images = len(datamodule.data_shape) == 3
    if "preempted" not in result and trainer.is_global_zero and cfg.get("final_samples", 0) and images:
        preemption = next((c for c in callbacks if isinstance(c, Preemption)), None)
        result.update(write_final_outputs(module, datamodule, trainer, cfg, num_classes, preemption, result))
    for lg in loggers:
        if hasattr(lg, "log_dir") and lg.log_dir and Path(lg.log_dir, "metrics.csv").exists():
            result["metrics_csv"] = str(Path(lg.log_dir, "metrics.csv"))
    for cb in (cb for cb in callbacks if isinstance(cb, Throughput)):
        if cb.images_per_second:
            result["train_img_per_s"] = round(cb.images_per_second, 1)
        if cb.startup_seconds is not None:
            result["startup_s"] = round(cb.startup_seconds, 1)
            result["first_step_s"] = round(cb.first_step_seconds, 1)
        if cb.validation_seconds:
            result["validation_runs_s"] = [round(v, 2) for v in cb.validation_seconds]
    result.update(compile_stats())
    if getattr(module, "captured", None) is not None:
        result.update(module.captured.stats())
    result.update(checkpoint_seconds(trainer.strategy.checkpoint_io))
    result["wall_time_s"] = round(time.time() - started, 1)
    if trainer.is_global_zero:
        print_summary(result)
    return result


def build_trainer(cfg: DictConfig, resumed_step: int | None) -> tuple[L.Trainer, list, list]:
    """The Trainer with the configured callbacks and loggers (each given the run's resolved config); with
    ``resumed_step`` (a resume) the CSV logger continues the run's metrics.csv from that step."""
    # FinalCheckpoint first: it saves the final step before the EMA callback copies the average into the module.
    callbacks = [FinalCheckpoint()] + [
        instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c
    ]
    if cfg.trainer.get("enable_progress_bar", True):
        # The bar reads the loss (a host sync on a GPU) when it refreshes, at most twice a second.
        callbacks.append(LossProgressBar(refresh_rate=int(cfg.get("progress_refresh_rate", 1))))
    loggers = [
        instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None and "_target_" in c
    ]
    for lg in loggers:
        if resumed_step is not None and isinstance(
            lg, CSVLogger
        ):  # one metrics.csv: the resumed steps continue it
            lg.continue_from_step = resumed_step
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=trainer_plugins(cfg)
    )
    if trainer.is_global_zero:
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return trainer, callbacks, loggers


def fit_result(
    trainer: L.Trainer, module: L.LightningModule, callbacks: list, output_dir: Path, started: float
) -> dict[str, Any]:
    """What a fit left: its step, metrics, checkpoint, and (when a signal stopped it) how to resume."""
    result: dict[str, Any] = {"output_dir": str(output_dir), "global_step": trainer.global_step}
    result["skipped_steps"] = int(getattr(module, "skipped_steps", 0))
    result["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    final_loss = module.last_loss()  # train/loss is logged every log_every_n_steps: the final step's own loss
    if final_loss is not None:
        result["metrics"]["train/loss"] = final_loss
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None:
        result["checkpoint"] = getattr(ckpt_cb, "last_model_path", "") or ckpt_cb.best_model_path
        last = Path(ckpt_cb.dirpath or "", f"{ckpt_cb.CHECKPOINT_NAME_LAST}{ckpt_cb.FILE_EXTENSION}")
        if (
            not result["checkpoint"]
            and ckpt_cb.dirpath
            and last.is_file()
            and last.stat().st_mtime >= started
        ):
            # strategy=ddp_spawn trains in worker processes: this process's trainer never stepped nor saved
            # (Lightning sends back only the weights and metrics), so the step count comes from the checkpoint.
            result["checkpoint"] = str(last)
            result["global_step"] = int(load_checkpoint_file(last, mmap=True)["global_step"])
    preempted = next(
        (c for c in callbacks if isinstance(c, Preemption) and c.stopped_at_step is not None), None
    )
    if preempted is not None:
        result["preempted"] = preempted_record(
            preempted.signal_name, preempted.stopped_at_step, preempted.checkpoint_path, output_dir
        )
        result["checkpoint"] = preempted.checkpoint_path
    return result


def preempted_record(signal_name: str, step: int, checkpoint: str | None, output_dir: Path) -> dict[str, Any]:
    """A result's ``preempted`` entry: the signal that stopped the run, its step, its checkpoint, how to resume."""
    return {
        "signal": signal_name,
        "step": step,
        "checkpoint": checkpoint,
        "resume": resume_command(output_dir),
    }


def write_final_outputs(
    module,
    datamodule,
    trainer: L.Trainer,
    cfg: DictConfig,
    num_classes: int | None,
    preemption: Preemption | None,
    result: dict[str, Any],
) -> dict[str, Any]:
    """The final samples (an autoencoder: its reconstructions), or, when a preemption signal stops them, the
    ``preempted`` record of ``fit_result``: the fit's last.ckpt holds every step, so the run is stopped, not lost,
    and its resume writes them."""
    output_dir = Path(result["output_dir"])
    try:
        with preemption.after_fit() if preemption is not None else contextlib.nullcontext():
            if not hasattr(module, "generate"):  # an autoencoder: what it makes of held-out images
                return write_reconstructions(module, datamodule, int(cfg.final_samples), output_dir)
            return write_final_samples(module, trainer, cfg, num_classes, output_dir)
    except StoppedBySignal as stop:
        print(
            f"\n{stop.signal_name} received: final samples not written; stopping.",
            file=sys.stderr,
            flush=True,
        )
        step, checkpoint = result["global_step"], result.get("checkpoint")
        return {"preempted": preempted_record(stop.signal_name, step, checkpoint, output_dir)}


def write_final_samples(
    module, trainer: L.Trainer, cfg: DictConfig, num_classes: int | None, output_dir: Path
) -> dict[str, str]:
    """``final_samples`` images from the trained sampler (a class per grid row when conditional): PNG + .npz."""
    # After fit, Lightning's weight averaging has copied the EMA weights into the module.
    module.to(trainer.strategy.root_device)
    gen = torch.Generator(device=module.device).manual_seed(cfg.seed)
    n = int(cfg.final_samples)
    nrow = -(-n // num_classes) if num_classes else None
    labels = torch.arange(n) // nrow if num_classes else None  # a class per row of the grid
    images = module.generate(n, generator=gen, labels=labels, progress=True)
    return {
        "samples_grid": str(save_grid(images, output_dir / "samples" / "final.png", nrow=nrow)),
        "samples_npz": str(save_samples_npz(images, output_dir / "samples" / "final.npz", labels)),
    }


def write_reconstructions(module, datamodule, n: int, output_dir: Path) -> dict[str, str]:
    """Validation images and their reconstructions as one PNG: each row of images above a row of what the
    autoencoder makes of them (about ``n`` images, whole rows only)."""
    nrow = max(1, int(round(n**0.5)))
    images = datamodule.real_images("val", n)
    images = images[: max(1, len(images) // nrow) * nrow]
    recon = module.reconstruct(images)
    rows = [part[start : start + nrow] for start in range(0, len(images), nrow) for part in (images, recon)]
    grid = save_grid(torch.cat(rows), output_dir / "samples" / "reconstructions.png", nrow=nrow)
    return {"reconstructions_grid": str(grid)}


def checkpoint_seconds(checkpoint_io) -> dict[str, float]:
    """What checkpoint writes cost the run: the time training waited for them (``checkpoint_write_s``) and, for
    writes in the background, the time they took there (``checkpoint_background_s``)."""
    if isinstance(checkpoint_io, BackgroundCheckpointIO) and checkpoint_io.seconds_writing:
        return {
            "checkpoint_write_s": round(checkpoint_io.seconds_waiting, 1),
            "checkpoint_background_s": round(checkpoint_io.seconds_writing, 1),
        }
    if isinstance(checkpoint_io, AtomicCheckpointIO) and checkpoint_io.seconds_writing:
        return {"checkpoint_write_s": round(checkpoint_io.seconds_writing, 1)}
    return {}


def trainer_plugins(cfg: DictConfig) -> list:
    """``trainer.plugins`` from the config, plus our checkpoint writer unless a checkpoint plugin is given:
    ``BackgroundCheckpointIO`` (``checkpoint_writes=background``) or ``AtomicCheckpointIO`` (foreground)."""
    from lightning.fabric.plugins import CheckpointIO

    configured = cfg.trainer.get("plugins") or []
    if isinstance(configured, str | DictConfig):
        configured = [configured]
    plugins = [instantiate(p) if isinstance(p, DictConfig) else p for p in configured]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        background = cfg.get("checkpoint_writes", "background") == "background"
        # a logger that uploads each checkpoint as it is saved (W&B log_model) must find the file written
        uploads = any((lg or {}).get("log_model") for lg in (cfg.get("logger") or {}).values())
        plugins.append(BackgroundCheckpointIO() if background and not uploads else AtomicCheckpointIO())
    return plugins


def resume_command(output_dir: Path) -> str:
    """The command line that continues this run (its own overrides, plus ckpt_path=last resume_dir=...)."""
    overrides: list[str] = []
    if HydraConfig.initialized():
        overrides = [
            o for o in HydraConfig.get().overrides.task if override_key(o) not in ("ckpt_path", "resume_dir")
        ]
    return " ".join(
        ["python -m diffusion_lab.train", *overrides, "ckpt_path=last", f"resume_dir={output_dir}"]
    )


def print_summary(result: dict[str, Any]) -> None:
    lines = [f"run directory : {result['output_dir']}", f"steps trained : {result['global_step']}"]
    for key, label in [
        ("checkpoint", "checkpoint"),
        ("samples_grid", "sample grid"),
        ("samples_npz", "samples .npz"),
        ("reconstructions_grid", "reconstructions"),
        ("metrics_csv", "metrics CSV"),
    ]:
        if result.get(key):
            lines.append(f"{label:<14}: {result[key]}")
    for key in ("val/loss", "val/bpd_one_t_mc", "val/psnr", "train/loss"):
        if key in result["metrics"]:
            lines.append(f"{key:<14}: {result['metrics'][key]:.4f}")
    if result.get("skipped_steps"):
        lines.append(f"skipped steps : {result['skipped_steps']} (non-finite loss or gradients)")
    if result.get("train_img_per_s"):
        lines.append(f"train speed   : {result['train_img_per_s']} img/s")
    if result.get("startup_s") is not None:
        lines.append(
            f"startup cost  : {result['startup_s']} s beyond steady-state steps ({startup_parts(result)})"
        )
    if "aot_cache_hit" in result:
        lines.append(f"compile cache : {cache_line(result)}")
    for key, label in (("recompiles", "recompiled"), ("graph_breaks", "graph breaks")):
        if result.get(key):
            lines.append(f"{label:<14}: {'; '.join(result[key])}")
    if result.get("validation_runs_s"):
        lines.append(f"validation    : {validation_line(result['validation_runs_s'])}")
    if result.get("preempted"):
        p = result["preempted"]
        lines.append(f"stopped by    : {p['signal']} at step {p['step']} (checkpoint saved)")
        lines.append(f"resume with   : {p['resume']}")
    lines.append(f"wall time     : {result['wall_time_s']} s")
    print("\n== diffusion_lab.train done ==\n" + "\n".join(lines), flush=True)


def startup_parts(result: dict[str, Any]) -> str:
    """Where a startup cost may come from, each timed on its own (they overlap: the first step includes the
    compilation)."""
    parts = [f"first step {result['first_step_s']} s"]
    if "graphs" in result:
        parts.append(f"compiling {result['compile_s']} s, {result['graphs']} graphs{compile_parts(result)}")
    if "capture_s" in result:
        fallbacks = result["capture_fallbacks"]
        more = f", {fallbacks} training calls of another shape run uncaptured" if fallbacks else ""
        if "capture_build_s" in result:
            more = (
                f", of which {result['capture_build_s']} s building the fused norm op's kernels at once{more}"
            )
        parts.append(f"capturing CUDA graphs {result['capture_s']} s{more}")
    if "checkpoint_write_s" in result:
        background = result.get("checkpoint_background_s")
        more = f", {background} s more in the background" if background is not None else ""
        parts.append(f"checkpoint writes {result['checkpoint_write_s']} s{more}")
    return "; ".join(parts)


def compile_parts(result: dict[str, Any]) -> str:
    """', of which 22.8 s generating and building kernels, 9.1 s in inductor's passes, ...': the compile
    phases that were timed, the kernels first (what a warm cache saves)."""
    names = {
        "kernels_s": "generating and building kernels",
        "passes_s": "in inductor's passes",
        "autograd_s": "in AOTAutograd",
        "trace_s": "tracing",
    }
    parts = [f"{result[key]} s {name}" for key, name in names.items() if key in result]
    return f", of which {', '.join(parts)}" if parts else ""


def cache_line(result: dict[str, Any]) -> str:
    """'AOTAutograd 2 hit, 0 missed, 0 bypassed; inductor graphs 4 hit, 0 missed, 0 bypassed': whether a warm
    start found what an earlier run compiled (a miss or bypass there repeats most of a cold compile)."""
    caches = (("AOTAutograd", "aot"), ("inductor graphs", "fx"))
    return "; ".join(
        f"{name} {result[f'{key}_cache_hit']} hit, {result[f'{key}_cache_miss']} missed, "
        f"{result[f'{key}_cache_bypass']} bypassed"
        for name, key in caches
    )


def validation_line(seconds: list[float]) -> str:
    """'3 runs, 7.2 s (the first 6.4 s, the others 0.4 s on average)': a first run that costs more than the
    others (kernels built on first use) is training time a short budget loses."""
    total = f"{len(seconds)} run{'s' if len(seconds) > 1 else ''}, {sum(seconds):.1f} s"
    if len(seconds) == 1:
        return total
    rest = sum(seconds[1:]) / (len(seconds) - 1)
    return f"{total} (the first {seconds[0]:.1f} s, the others {rest:.1f} s on average)"
