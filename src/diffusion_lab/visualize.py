"""Figures of the diffusion process, made by the library's own code on real data or a trained checkpoint.

    python -m diffusion_lab.visualize forward                  # x_0 -> x_T on dataset images (figure=forward)
    python -m diffusion_lab.visualize forward process=cold degradation=mask   # a cold degradation D(x_0, t)
    python -m diffusion_lab.visualize schedules                # ᾱ_t, SNR and log-SNR of every schedule
    python -m diffusion_lab.visualize spectrum schedule=cosine # radially averaged power spectrum of x_t over t
    python -m diffusion_lab.visualize trajectory ckpt_path=PATH sampler=dpmpp2m steps=20
    python -m diffusion_lab.visualize vlb ckpt_path=PATH n=16   # per-timestep VLB terms of a checkpoint

Each figure writes ``<out_dir>/<name>.png`` and, beside it, the plotted numbers (``.csv`` or ``.npz``), and
prints where they are. Data: the ``data`` group (default Fashion-MNIST) for forward / spectrum, the
checkpoint's own data for vlb; process and schedule: the ``process`` (``ddpm``, or ``cold`` with its ``degradation``)
and ``schedule`` groups, or the checkpoint's when ``ckpt_path`` (alias ``ckpt``) is given. Figures are not sent to a
logger.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .cli import checkpoint_argument, command
from .errors import UserError, check_types, require_writable

__all__ = ["FIGURE_NAMES", "FIGURE_SUMMARIES", "NEEDS_CKPT", "visualize", "main"]

# The figures (``figure=``) and what each shows, for --help: each is made by ``figures.FIGURES[name]``, named here
# too so that a wrong name is refused before torch loads (a test checks the two agree).
FIGURE_SUMMARIES = {
    "forward": "x_0 -> x_t on dataset images at chosen t (process=ddpm, or cold with its degradation)",
    "schedules": "ᾱ_t, SNR_t and log-SNR of every registered schedule",
    "spectrum": "radially averaged power spectrum of x_t over t, and the signal's share per frequency",
    "trajectory": "x_t and the network's x̂_0 at chosen steps of one sampling run (needs ckpt_path)",
    "vlb": "a checkpoint's per-timestep terms L_{t-1} of the variational bound, in bits/dim (needs ckpt_path)",
}
FIGURE_NAMES = tuple(FIGURE_SUMMARIES)
NEEDS_CKPT = ("trajectory", "vlb")


def visualize(cfg: DictConfig) -> dict[str, str]:
    """Make ``cfg.figure``; returns the paths written ({"png", "data", ...})."""
    if OmegaConf.is_missing(cfg, "figure") or cfg.figure is None:
        raise UserError(
            f"figure= is required: one of {sorted(FIGURE_NAMES)} (python -m diffusion_lab.visualize forward)"
        )
    figure = str(cfg.figure)
    if figure not in FIGURE_NAMES:
        raise UserError(f"figure={figure!r} is unknown; choose one of {sorted(FIGURE_NAMES)}")
    ckpt_path = checkpoint_argument(cfg, required=False)
    if figure in NEEDS_CKPT and not ckpt_path:
        raise UserError(
            f"figure={figure} needs ckpt_path=PATH (alias ckpt=; a .ckpt from python -m diffusion_lab.train)"
        )
    check_types(
        cfg, {"n": (int,), "seed": (int,), "show": (int,), "batch_size": (int,), "guidance": (float,)}
    )
    for key, what in (
        ("n", "the number of images"),
        ("show", "the number of columns shown"),
        ("batch_size", "it"),
    ):
        if int(cfg[key]) < 1:
            raise UserError(f"{key}={cfg[key]} is invalid: {what} must be >= 1")
    for t in cfg.t if OmegaConf.is_list(cfg.t) else [cfg.t]:
        if t is not None and (isinstance(t, bool) or not isinstance(t, int)):
            raise UserError(f"t={t!r} is invalid: each timestep must be an integer (0..T-1), or t=null")
    if cfg.out_dir:
        out_dir = Path(cfg.out_dir)
    elif cfg.ckpt_path:
        out_dir = Path(cfg.ckpt_path).resolve().parent.parent / "figures"
    else:
        out_dir = Path("figures")
    require_writable("out_dir", str(out_dir), out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from .figures import FIGURES  # torch and the data: once the options above have passed

    paths = FIGURES[figure](cfg, out_dir / str(cfg.name or figure))
    result = {k: str(v) for k, v in paths.items()}
    if cfg.get("log_to"):
        result["logged_to"] = send_to_logger(str(cfg.log_to), figure, result["png"], out_dir)
    print(f"\n== diffusion_lab.visualize {figure} ==")
    for key, path in result.items():
        print(f"{key:<8}: {path}")
    return result


def send_to_logger(kind: str, figure: str, png: str, out_dir: Path) -> str:
    """Send the figure to W&B (``log_to=wandb``; WANDB_MODE=offline works) or TensorBoard (``log_to=tensorboard``)."""
    if kind == "wandb":
        import wandb

        run = wandb.init(
            project="diffusion_lab", job_type="visualize", dir=str(out_dir), reinit="finish_previous"
        )
        try:
            run.log({f"figures/{figure}": wandb.Image(png)})
            return str(run.dir)
        finally:
            run.finish()
    if kind == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter
        from torchvision.io import read_image

        log_dir = out_dir / "tensorboard"
        with SummaryWriter(str(log_dir)) as writer:
            writer.add_image(f"figures/{figure}", read_image(png)[:3], 0)
        return str(log_dir)
    raise UserError(f"log_to={kind!r} is unknown for visualize; choose wandb, tensorboard or null")


def usage() -> str:
    """This module's docstring and the figures, one line each (``--help``)."""
    lines = [f"  {name:<10}  {what}" for name, what in FIGURE_SUMMARIES.items()]
    return "\n".join([__doc__.strip(), "", "== Figures (figure=NAME) ==", *lines])


@command("visualize", usage=usage())
def _hydra_main(cfg: DictConfig) -> None:
    visualize(cfg)


def main() -> None:
    """``python -m diffusion_lab.visualize <figure> key=value ...``: a bare first argument is the figure."""
    if len(sys.argv) > 1 and "=" not in sys.argv[1] and not sys.argv[1].startswith("-"):
        sys.argv[1] = f"figure={sys.argv[1]}"
    _hydra_main()


if __name__ == "__main__":
    main()
