"""Train a diffusion model.

    python -m diffusion_lab.train                                   # the default experiment (CPU-sized)
    python -m diffusion_lab.train schedule=cosine loss=vlb           # any option of any group
    python -m diffusion_lab.train experiment=fmnist trainer=gpu      # a preset study
    python -m diffusion_lab.train ckpt_path=last resume_dir=outputs/train/runs/<time>   # exact resume
    python -m diffusion_lab.train -m schedule=linear,cosine loss=simple,hybrid          # a sweep

At the end it prints where the run directory, the checkpoint, the sample grid and the metrics are.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from .build import build_module
from .callbacks import Throughput
from .errors import UserError, friendly_errors
from .io import save_grid, save_samples_npz

__all__ = ["train", "main", "CONFIG_DIR"]

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """``ckpt_path``: null (fresh run), ``last`` (the newest checkpoint of the run being resumed), or a path."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, "", "null"):
        return None
    if ckpt == "last":
        run_dir = Path(cfg.get("resume_dir") or output_dir)
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise UserError(
                f"ckpt_path=last: no checkpoint at {last}; set resume_dir=<the run directory to continue> "
                "or ckpt_path=<file.ckpt>"
            )
        return str(last)
    if not Path(ckpt).is_file():
        raise UserError(f"ckpt_path={ckpt!r} does not exist; pass a .ckpt file, 'last', or null")
    return str(ckpt)


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


def _output_dir(cfg: DictConfig) -> Path:
    try:
        return Path(cfg.paths.output_dir)
    except Exception:  # composed outside @hydra.main (tests) without an output_dir
        return Path(HydraConfig.get().runtime.output_dir)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build everything from ``cfg``, fit, write final samples; returns the paths and final metrics."""
    started = time.time()
    output_dir = _output_dir(cfg)
    check_output_dir(output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    datamodule = instantiate(cfg.data)
    num_classes = datamodule.num_classes if cfg.get("conditional") else None
    module = build_module(cfg, datamodule.data_shape, num_classes)
    ckpt_path = resolve_ckpt_path(cfg, output_dir)

    callbacks = [
        instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c
    ]
    if cfg.trainer.get("enable_progress_bar", True):
        # The bar reads (and so host-syncs) the logged loss each time it refreshes: on a GPU refresh rarely.
        callbacks.append(TQDMProgressBar(refresh_rate=int(cfg.get("progress_refresh_rate", 1))))
    loggers = [
        instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None and "_target_" in c
    ]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.is_global_zero:
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    result: dict[str, Any] = {"output_dir": str(output_dir), "global_step": trainer.global_step}
    result["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
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
            ckpt = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
            result["global_step"] = int(ckpt["global_step"])
    if trainer.is_global_zero and cfg.get("final_samples", 0) and len(datamodule.data_shape) == 3:
        # After fit, Lightning's weight averaging has copied the EMA weights into the module.
        module.to(trainer.strategy.root_device)
        gen = torch.Generator(device=module.device).manual_seed(cfg.seed)
        n = int(cfg.final_samples)
        labels = torch.arange(n) % num_classes if num_classes else None
        images = module.generate(n, generator=gen, labels=labels, progress=True)
        result["samples_grid"] = str(save_grid(images, output_dir / "samples" / "final.png"))
        result["samples_npz"] = str(save_samples_npz(images, output_dir / "samples" / "final.npz", labels))
    for lg in loggers:
        if hasattr(lg, "log_dir") and lg.log_dir and Path(lg.log_dir, "metrics.csv").exists():
            result["metrics_csv"] = str(Path(lg.log_dir, "metrics.csv"))
    for cb in callbacks:
        if isinstance(cb, Throughput) and cb.images_per_second:
            result["train_img_per_s"] = round(cb.images_per_second, 1)
    result["wall_time_s"] = round(time.time() - started, 1)
    if trainer.is_global_zero:
        print_summary(result)
    return result


def print_summary(result: dict[str, Any]) -> None:
    lines = [f"run directory : {result['output_dir']}", f"steps trained : {result['global_step']}"]
    for key, label in [
        ("checkpoint", "checkpoint"),
        ("samples_grid", "sample grid"),
        ("samples_npz", "samples .npz"),
        ("metrics_csv", "metrics CSV"),
    ]:
        if result.get(key):
            lines.append(f"{label:<14}: {result[key]}")
    for key in ("val/loss", "val/bpd_estimate", "train/loss"):
        if key in result["metrics"]:
            lines.append(f"{key:<14}: {result['metrics'][key]:.4f}")
    if result.get("train_img_per_s"):
        lines.append(f"train speed   : {result['train_img_per_s']} img/s")
    lines.append(f"wall time     : {result['wall_time_s']} s")
    print("\n== diffusion_lab.train done ==\n" + "\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@friendly_errors
def main(cfg: DictConfig) -> float | None:
    try:
        result = train(cfg)
    finally:
        # One failed job must not break the rest of a multirun: close any W&B run it opened.
        if "wandb" in sys.modules:
            import wandb

            wandb.finish()
    return result["metrics"].get("val/loss")


if __name__ == "__main__":
    main()
