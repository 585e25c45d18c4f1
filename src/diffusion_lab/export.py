"""Export a checkpoint to another library's format (format=diffusers: a diffusers DDPMPipeline folder).

    python -m diffusion_lab.export ckpt_path=outputs/<task_name>/runs/<time>/checkpoints/last.ckpt out=exported/ddpm

The folder loads with ``DDPMPipeline.from_pretrained(out)``, ``UNet2DModel.from_pretrained(out,
subfolder="unet")`` and ``DDPMScheduler`` / ``DDIMScheduler.from_pretrained(out, subfolder="scheduler")``; the
EMA network and the trained schedule, parameterization, variance and clipping are mapped exactly, and what has
no diffusers counterpart is refused in one line. The way back: ``python -m diffusion_lab.import_model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .cli import checkpoint_argument, command
from .errors import UserError, check_types, require_writable

__all__ = ["export", "check_format", "main"]

FORMATS = ("diffusers",)


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"format={fmt!r} is unknown; choose one of: {', '.join(FORMATS)}")


def output_folder(out: str, overwrite: bool) -> Path:
    """``out`` as a folder that may be written: new, empty, or (with overwrite) one to write over."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"out={out!r} is a file; pass a folder to write the pipeline into")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"out={out!r} exists and is not empty; pass overwrite=true or another folder")
    require_writable("out", out, path)
    return path


def export(cfg: DictConfig) -> dict[str, Any]:
    """Write the checkpoint ``cfg.ckpt_path`` as a ``cfg.format`` folder at ``cfg.out``; returns what was written."""
    check_types(cfg, {"format": (str,), "out": (str, None), "overwrite": (bool,)})
    check_format(cfg.format)
    if not cfg.out:
        raise UserError("out= is required: the folder to write the diffusers pipeline into")
    ckpt = checkpoint_argument(cfg, required=True)
    out = output_folder(str(cfg.out), bool(cfg.overwrite))
    # The command's imports stop at the arguments' checks: torch and the parts load once they pass, so a wrong
    # argument is refused in about a second.
    from .build import load_checkpoint

    parts, spec, _ = load_checkpoint(ckpt, map_location="cpu")
    if parts.diffusion.name != "ddpm":
        raise UserError(
            f"format=diffusers exports the Gaussian process (process=ddpm); this checkpoint's is "
            f"process={parts.diffusion.name}"
        )
    from .interop.diffusers_folder import write_pipeline_folder

    result = write_pipeline_folder(parts, spec, out)
    print(
        f"\n== diffusion_lab.export done ==\nfolder  : {result['out']} (DDPMPipeline)\n"
        f"check   : outputs differ from the checkpoint's network by at most {result['max_abs_difference']:.2g}",
        flush=True,
    )
    return result


@command("export", usage=__doc__)
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
