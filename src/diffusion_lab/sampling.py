"""Drawing samples from a checkpoint: the run behind ``python -m diffusion_lab.sample``, and the device and
sampler choices that ``evaluate`` and ``visualize`` share. The command line (``sample.py``) imports it (torch, the
networks, the samplers: most of a start-up's seconds) only once its own checks have passed, so a mistyped option
is refused before them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from .build import load_checkpoint
from .diffusion.guidance import ClassifierFreeGuidance
from .errors import UserError, unwritable_reason
from .io import save_grid, save_samples_npz
from .latent.decoder import sample_images, sampler_for
from .process_parts import check_applies
from .samplers import SAMPLERS, Sampler
from .sampling_variance import with_sampling_variance

__all__ = ["sample", "choose_sampler", "sampler_from_config", "resolve_device", "class_labels", "draw"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name!r} but no CUDA device is available; use device=cpu or device=auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r} is not a device; use device=auto, cpu, cuda or cuda:N") from None


def choose_sampler(stored: dict, name: str | None, steps: Any = None, eta: float | None = None) -> Sampler:
    """The stored sampler, or another by name; ``steps`` / ``eta`` override either."""
    from hydra.utils import instantiate

    if name is None:
        kwargs = {k: v for k, v in stored.items() if k != "_target_"}
        cls = instantiate({"_target_": stored["_target_"], "_partial_": True}).func
    else:
        if name not in SAMPLERS:
            raise UserError(
                f"sampler={name!r} is unknown; choose one of {sorted(SAMPLERS)} (or null for the trained one)"
            )
        cls, kwargs = SAMPLERS[name], {}
    if steps is not None:
        kwargs["steps"] = steps
    if eta is not None:
        if "eta" not in cls.__init__.__code__.co_varnames:
            raise UserError(f"eta={eta} applies to sampler=ddim only, not {cls.name}")
        kwargs["eta"] = eta
    return cls(**kwargs)


def sampler_from_config(
    option: Any, stored: dict, steps: Any = None, eta: float | None = None, process: Any = None
) -> Sampler:
    """The sampler a CLI's ``sampler=`` option names: ``ddpm|ddim`` arrives as the node of
    conf/sampler/<name>.yaml, a bare name picks from the registry, null keeps the one stored in the checkpoint.
    With ``process`` (the checkpoint's), a sampler made for another process is refused in one line."""
    if isinstance(option, DictConfig):
        sampler = choose_sampler(OmegaConf.to_container(option, resolve=True), None, steps, eta)
    else:
        sampler = choose_sampler(stored, option, steps, eta)
    if process is not None:
        check_applies(type(sampler), "sampler", process)
    return sampler


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Draw ``n`` samples from the checkpoint's EMA network (the command line's checks already passed: see
    :func:`diffusion_lab.sample.sample`); writes a .npz (and a PNG grid for images)."""
    started = time.time()
    device = resolve_device(str(cfg.device))
    parts, spec, _ = load_checkpoint(cfg.ckpt_path, map_location="cpu")
    chosen = sampler_from_config(cfg.sampler, spec["sampler"], cfg.steps, cfg.eta, parts.diffusion)
    if cfg.get("sampling_variance") is not None:
        parts = with_sampling_variance(parts, str(cfg.sampling_variance), chosen)
    sampler = sampler_for(chosen, parts.decoder)
    n = int(cfg.n)
    labels, per_row = class_labels(cfg, spec.get("num_classes"), n)
    ckpt_path = Path(cfg.ckpt_path).resolve()
    out_dir = Path(cfg.out_dir) if cfg.out_dir else ckpt_path.parent.parent / "samples"
    if (reason := unwritable_reason(out_dir)) is not None:  # before sampling, not after
        raise UserError(
            f"cannot write the samples to out_dir={str(out_dir)!r} ({reason}); pick another out_dir="
        )
    images = draw(cfg, parts, spec, sampler, labels, device)

    variance = f"_{cfg.sampling_variance}" if cfg.get("sampling_variance") is not None else ""
    name = cfg.name or f"{ckpt_path.stem}_{sampler.name}{sampler.steps or ''}{variance}_n{n}"
    result = {"samples_npz": str(save_samples_npz(images, out_dir / f"{name}.npz", labels)), "n": n}
    if len(spec["data_shape"]) == 3:
        nrow = per_row if labels is not None else None  # a class per row
        result["grid"] = str(save_grid(images[:256], out_dir / f"{name}.png", nrow=nrow))
    result["seconds"] = round(time.time() - started, 2)
    result["sampler"] = repr(sampler)
    result["variance"] = parts.diffusion.variance.name if hasattr(parts.diffusion, "variance") else None
    print(
        f"\n== diffusion_lab.sample done ==\nsampler : {sampler!r}"
        + (f" with variance={result['variance']}" if variance else "")
        + f"\nsamples : {result['samples_npz']}\n"
        + (f"grid    : {result['grid']}\n" if "grid" in result else "")
        + f"time    : {result['seconds']} s on {device}",
        flush=True,
    )
    return result


def class_labels(cfg: DictConfig, num_classes: int | None, n: int) -> tuple[torch.Tensor | None, int | None]:
    """The label of each sample (one row of the grid per class in ``classes``) and the row length; (None, None)
    for an unconditional checkpoint, which refuses classes= and guidance=."""
    if not num_classes:
        if cfg.classes is not None or cfg.guidance:
            raise UserError(
                "classes= / guidance= need a class-conditional checkpoint (trained with conditional=true)"
            )
        return None, None
    given = cfg.classes
    if given is not None and not (isinstance(given, ListConfig) and all(type(c) is int for c in given)):
        raise UserError(f"classes={given!r} must be a list of class indices (e.g. classes=[0,3]) or null")
    classes = list(given) if given is not None else list(range(num_classes))
    bad = [c for c in classes if not 0 <= int(c) < num_classes]
    if bad:
        raise UserError(f"classes={bad} out of range: this model has classes 0..{num_classes - 1}")
    # One row per class: the first ``per_row`` samples are of the first class, and so on.
    per_row = -(-n // len(classes))
    return torch.tensor([int(classes[i // per_row]) for i in range(n)]), per_row


def draw(cfg: DictConfig, parts, spec: dict, sampler: Sampler, labels, device: torch.device) -> torch.Tensor:
    """``cfg.n`` samples in batches of ``cfg.batch_size`` from one generator seeded by ``cfg.seed`` (guided by
    ``cfg.guidance`` when there are labels), decoded to pixels for a latent model, clamped to [-1, 1], on the
    CPU."""
    net = parts.net.to(device)
    decoder = parts.decoder.to(device) if parts.decoder is not None else None
    shape = tuple(spec["data_shape"])
    n, bs = int(cfg.n), int(cfg.batch_size)
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
    chunks = []
    for start in range(0, n, bs):
        b = min(bs, n - start)
        model = net
        if labels is not None:
            y = labels[start : start + b].to(device)
            learned = parts.diffusion.out_channel_factor > 1  # variance channels: not guided
            mean_channels = shape[0] if learned else None
            model = ClassifierFreeGuidance(
                net, y, float(cfg.guidance), spec["num_classes"], mean_channels=mean_channels
            )
        noise = torch.randn((b, *shape), device=device, generator=gen)
        x = sample_images(sampler, parts.diffusion, model, noise, gen, bool(cfg.progress), decoder)
        chunks.append(x.cpu())
    return torch.cat(chunks)
