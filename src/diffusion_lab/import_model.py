"""Import another library's model as a diffusion_lab checkpoint (format=diffusers: a DDPMPipeline folder).

    python -m diffusion_lab.import_model src=exported/ddpm out=imported.ckpt
    python -m diffusion_lab.sample ckpt_path=imported.ckpt out_dir=samples n=16

``src`` is a diffusers pipeline folder (model_index.json, unet/ with a UNet2DModel, scheduler/); the UNet
becomes our UNet (the same function, checked on a random batch) and the scheduler's betas, prediction_type,
variance_type and clip_sample become the checkpoint's spec, so ``sample``, ``evaluate`` (with ``data=``) and
``visualize`` read it like a trained one. What our UNet or process cannot compute is refused in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .cli import command
from .errors import UserError, check_types, require_writable
from .export import check_format

__all__ = ["import_model", "main"]


def check_arguments(cfg: DictConfig) -> tuple[Path, Path]:
    """(src folder, out checkpoint path), checked."""
    check_types(cfg, {"format": (str,), "src": (str, None), "out": (str, None), "overwrite": (bool,)})
    check_format(cfg.format)
    if not cfg.src or not cfg.out:
        raise UserError("src= and out= are required: the diffusers pipeline folder and the .ckpt to write")
    src, out = Path(cfg.src), Path(cfg.out)
    if not src.is_dir():
        raise UserError(f"src={cfg.src!r} is not a folder; pass a diffusers pipeline folder")
    if out.exists() and not cfg.overwrite:
        raise UserError(f"out={cfg.out!r} exists; pass overwrite=true or another path")
    require_writable("out", cfg.out, out.parent)
    return src, out


def import_model(cfg: DictConfig) -> dict[str, Any]:
    """Write the pipeline folder ``cfg.src`` as the checkpoint ``cfg.out``; returns what was written."""
    src, out = check_arguments(cfg)
    # Loaded once the arguments pass (as in export), so a wrong argument is refused in about a second.
    from .checkpointing import atomic_torch_save
    from .interop.diffusers_folder import checkpoint_from_folder
    from .module import CHECKPOINT_KEY

    ckpt, difference = checkpoint_from_folder(src)
    atomic_torch_save(ckpt, out)
    print(
        f"\n== diffusion_lab.import_model done ==\ncheckpoint : {out}\n"
        f"check      : outputs differ from the diffusers UNet by at most {difference:.2g}\n"
        f"sample     : python -m diffusion_lab.sample ckpt_path={out} out_dir=<folder>",
        flush=True,
    )
    return {"checkpoint": str(out), "max_abs_difference": difference, "spec": ckpt[CHECKPOINT_KEY]["spec"]}


@command("import_model", usage=__doc__)
def main(cfg: DictConfig) -> None:
    import_model(cfg)


if __name__ == "__main__":
    main()
