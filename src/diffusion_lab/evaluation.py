"""One evaluation of a checkpoint: the network loaded (compiled where asked), bits/dim, the sample metrics per
sampler setting, the record written as it goes and continued after a stop. ``python -m diffusion_lab.evaluate`` is
its command line; it imports this module (torch, the networks, the feature network: most of a start-up's
seconds) only once the options have been checked."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .build import load_checkpoint
from .compile_policy import compile_mode, compile_options, use_compile_cache, use_torch_ptxas
from .diffusion import calc_bpd_loop
from .diffusion.guidance import ClassifierFreeGuidance
from .errors import UserError, require_writable, unwritable_reason
from .evaluate import as_list
from .evaluate_resume import check_same_measurement, done_rows, partial_evaluation, setting_key
from .evaluation_record import print_done, write_steps_plot, write_table, write_vlb_curve
from .io import file_sha256
from .latent.decoder import sample_images, sampler_for
from .metrics.evaluation import (
    QualitySettings,
    build_extractor,
    largest_batch,
    real_features_for,
    score_generator,
    score_names,
)
from .metrics.feature_nets import FeatureExtractor
from .metrics.quality import SampleQuality
from .provenance import code_sha256, device_name
from .samplers import Sampler
from .sampling import resolve_device, sampler_from_config
from .sampling_variance import with_sampling_variance
from .versions import package_versions

__all__ = ["evaluate", "build_datamodule", "score_setting"]

# The packages whose versions can change a number in the tables.
VERSIONED = (
    "torch",
    "torchvision",
    "torchmetrics",
    "torch-fidelity",
    "lightning",
    "numpy",
    "scipy",
    "diffusion_lab",
)


# ------------------------------------------------------------------------------------------- run settings
def quality_settings(cfg: DictConfig) -> QualitySettings:
    return QualitySettings(
        features=str(cfg.features),
        inception_weights=cfg.inception_weights,
        allow_download=bool(cfg.allow_download),
        real_split=str(cfg.real_split),
        n_real=int(cfg.n_real),
        cache_dir=str(cfg.cache_dir),
        batch_size=int(cfg.batch_size),
        kid_subset_size=min(1000, int(cfg.n), int(cfg.n_real)),
    )


def guidance_scales(cfg: DictConfig, spec: dict) -> list[float]:
    guidances = [float(g or 0.0) for g in as_list(cfg.guidance)]
    if any(guidances) and not spec.get("num_classes"):
        raise UserError("guidance= needs a class-conditional checkpoint (trained with conditional=true)")
    return guidances


def check_bits_per_dim(spec: dict[str, Any], parts, sample_metrics: list[str]) -> None:
    """metrics=[bpd] needs a likelihood of pixels: refused for latent checkpoints and likelihood-free processes."""
    if spec.get("latent"):
        raise UserError(
            "metrics=[bpd] is a likelihood of pixels, and this checkpoint models an autoencoder's latents; "
            "drop bpd (fid, kid, pr, is score its decoded images)"
        )
    if not parts.diffusion.has_likelihood:
        raise UserError(
            f"metrics=[bpd] needs a likelihood, which process={parts.diffusion.name} has not; "
            f"leave bpd out (metrics=[{','.join(sample_metrics or ['fid'])}])"
        )


# -------------------------------------------------------------------------------------------- output folder
def evaluation_dir(cfg: DictConfig, ckpt_path: Path) -> tuple[Path, bool]:
    """Where this evaluation writes, and whether the user named it: ``out_dir`` (refused when it holds files:
    an evaluation never overwrites another), else ``<run>/evaluation/<checkpoint>-<time>``."""
    if cfg.get("resume") and not cfg.out_dir:
        raise UserError(
            "resume=true continues the evaluation in out_dir=; give the folder of the stopped evaluation"
        )
    if cfg.out_dir:
        out = Path(cfg.out_dir)
        if cfg.get("resume"):
            return out, True
        if out.is_dir() and any(out.iterdir()):
            raise UserError(
                f"out_dir={str(out)!r} already holds files and an evaluation never overwrites another; "
                "give a new folder, or leave out_dir unset for a fresh <run>/evaluation/<checkpoint>-<time>"
            )
        require_writable("out_dir", str(out), out)
        return out, True
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ckpt_path.parent.parent / "evaluation" / f"{ckpt_path.stem}-{stamp}"
    if (reason := unwritable_reason(out.parent)) is not None:
        raise UserError(f"the checkpoint's run folder cannot take an evaluation ({reason}); pass out_dir=")
    return out, False


def claim_dir(out: Path, named: bool) -> Path:
    """Create the folder; an unnamed one that exists already (two evaluations in one second) gets -2, -3, ..."""
    if named:
        out.mkdir(parents=True, exist_ok=True)
        return out
    for k in range(1, 1000):
        candidate = out if k == 1 else out.with_name(f"{out.name}-{k}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"no free evaluation folder beside {out}; pass out_dir=")


# ------------------------------------------------------------------------------------ checkpoint and data
def build_datamodule(spec: dict, data_root: str | None):
    data_cfg = dict(spec.get("data") or {})
    if not data_cfg:
        raise UserError("this checkpoint stores no data config; it cannot be scored against real data")
    data_cfg["on_gpu"] = False
    if data_root:
        data_cfg["root"] = data_root
    return instantiate(data_cfg)


def load_network(cfg: DictConfig, device: torch.device):
    """(parts, spec, raw checkpoint, the network to sample with, whether it is compiled)."""
    mode = compile_mode(cfg.get("compile"))
    compiled = mode is not None
    options = compile_options(mode, bool(cfg.get("channels_last"))) if compiled else None
    parts, spec, ckpt = load_checkpoint(cfg.ckpt_path, map_location="cpu")
    net = parts.net.to(device)
    if parts.decoder is not None:
        parts.decoder.to(device)
    if cfg.get("channels_last"):
        net = net.to(memory_format=torch.channels_last)
    if compiled:
        use_compile_cache(cfg.get("compile_cache"))
        use_torch_ptxas()
        net = torch.compile(net, options=options)
    return parts, spec, ckpt, net, compiled


# --------------------------------------------------------------------------------------------- provenance
def provenance(
    cfg: DictConfig,
    ckpt_path: Path,
    ckpt: dict,
    extractor: FeatureExtractor | None,
    metrics: list[str],
    device: torch.device,
) -> dict[str, Any]:
    """How the numbers were measured: enough to reproduce them, or to see that two are not comparable."""
    seeds = [int(cfg.seed) + k for k in range(int(cfg.sample_sets))]
    record: dict[str, Any] = {
        "checkpoint": {
            "path": str(ckpt_path),
            "global_step": ckpt.get("global_step"),
            "sha256": file_sha256(ckpt_path),
        },
        "metrics": metrics,
        "device": str(device),
        "device_model": device_name() if device.type == "cuda" else "cpu",  # the GPU the timings are of
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(VERSIONED),
        "code_sha256": code_sha256(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if extractor is not None:
        record |= {
            "features": extractor.describe(),
            "n_real": int(cfg.n_real),
            "real_split": str(cfg.real_split),
            "n_generated": int(cfg.n),
            "sample_sets": int(cfg.sample_sets),
            "seeds": seeds,
            "batch_size": int(cfg.batch_size),
            "guidance": [float(g or 0.0) for g in as_list(cfg.guidance)],
        }
    if "bpd" in metrics:
        record["bpd"] = {
            "n": int(cfg.bpd_n),
            "split": str(cfg.bpd_split),
            "clip_denoised": bool(cfg.bpd_clip_denoised),
            "seed": int(cfg.seed),
        }
    return record


# ------------------------------------------------------------------------------------------------ bits/dim
def bits_per_dim(parts, datamodule, cfg: DictConfig, device: torch.device, out_dir: Path) -> dict[str, Any]:
    """Full-bound bits/dim over ``bpd_n`` images, with its standard error, and the per-t VLB curve.

    ``bpd_clip_denoised=true`` (the default) is improved-diffusion's protocol (``image_nll.py``): the predicted
    x_0 is clipped to [-1, 1] before it makes the reverse mean; false gives the bound of the network as trained.
    """
    images = datamodule.real_images(cfg.bpd_split, int(cfg.bpd_n))
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
    clip = bool(cfg.bpd_clip_denoised)
    totals, vbs = [], []
    for chunk in images.split(int(cfg.bpd_batch_size)):
        r = calc_bpd_loop(
            parts.diffusion,
            parts.net,
            chunk.to(device),
            progress=bool(cfg.progress),
            generator=gen,
            clip_denoised=clip,
        )
        totals.append(r["total_bpd"].cpu())
        vbs.append(r["vb"].cpu().double())
    total = torch.cat(totals).double()
    write_vlb_curve(torch.cat(vbs), out_dir)
    n = total.numel()
    stderr = float(total.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {"bpd": float(total.mean()), "bpd_stderr": stderr, "bpd_n": n, "bpd_clip_denoised": clip}


# ------------------------------------------------------------------------------------------ sample metrics
class Network(NamedTuple):
    """What samples: the checkpoint's parts and spec, the network to sample with (compiled or not), its device."""

    parts: Any
    net: torch.nn.Module
    spec: dict
    device: torch.device
    compiled: bool


def make_generate(
    network: Network, sampler: Sampler, w: float, full_batch: int
) -> Callable[[int, torch.Generator], torch.Tensor]:
    """``generate(b, generator)``: b samples in [-1, 1] with ``sampler`` at guidance scale ``w`` (decoded to
    pixels for a latent model)."""
    parts, net, spec, device, compiled = network
    shape = tuple(spec["data_shape"])
    num_classes = spec.get("num_classes")

    def generate(b: int, gen: torch.Generator) -> torch.Tensor:
        # A compiled network sees one batch shape: a batch one smaller than the largest (the batches are
        # balanced, see rank_batches) is generated at full size and cut (a new shape would recompile in the
        # middle of the run).
        keep, b = b, (max(b, full_batch) if compiled else b)
        noise = torch.randn((b, *shape), device=device, generator=gen)
        model = net
        if num_classes:
            y = torch.randint(0, num_classes, (b,), device=device, generator=gen)
            learned = parts.diffusion.out_channel_factor > 1  # variance channels: not guided
            model = ClassifierFreeGuidance(net, y, w, num_classes, shape[0] if learned else None)
        # bf16 autocast on CUDA, as DiffusionModule.generate samples during training
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            x = sample_images(sampler, parts.diffusion, model, noise, gen, decoder=parts.decoder)
        return x[:keep]

    return generate


def _wanted(key: str, metrics: list[str]) -> bool:
    prefix = {"fid": ("fid",), "kid": ("kid_",), "pr": ("precision", "recall"), "is": ("is_",)}
    return any(key.startswith(p) for m in metrics for p in prefix.get(m, ()))


def combine_sets(sets: list[dict[str, float]], metrics: list[str], names: dict[str, str]) -> dict[str, Any]:
    """The scores of S independent sample sets: each metric's mean over the sets, under its table name; for the
    Fréchet distance also its spread, ``<name>_std`` (over the sets; null for one set) and ``<name>_values``.
    KID keeps its own standard deviation over subsets (``*_std``), averaged over the sets."""
    out: dict[str, Any] = {}
    for key in (k for k in sets[0] if _wanted(k, metrics)):
        values = [float(s[key]) for s in sets]
        out[names[key]] = float(np.mean(values))
        if key == "fid":
            out[f"{names[key]}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
            out[f"{names[key]}_values"] = values
    return out


def _progress_line(setting: str) -> Callable[[int, int, float], None]:
    def line(done: int, total: int, seconds: float) -> None:
        print(f"generating {setting}: {done}/{total} samples, {seconds:.0f} s", flush=True)

    return line


def score_setting(
    metric: SampleQuality, generate, sampler: Sampler, w: float, parts, cfg, device, sample_metrics, names
) -> dict[str, Any]:
    """One table row: ``sample_sets`` sets of ``n`` samples (seeds seed, seed + 1, ...) scored and combined."""
    started = time.time()
    seeds = [int(cfg.seed) + k for k in range(int(cfg.sample_sets))]
    steps = sampler.num_evaluations(parts.diffusion)
    # progress=false (a study's logs): a plain line per batch instead of a bar, so a log shows how far it got
    lines = None if cfg.progress else _progress_line(f"{sampler.name} {steps}")
    sets = [
        score_generator(
            metric,
            generate,
            int(cfg.n),
            int(cfg.batch_size),
            device,
            seed,
            bool(cfg.progress),
            on_batch=lines,
        )
        for seed in seeds
    ]
    return {
        "sampler": sampler.name,
        "sampler_settings": repr(sampler),
        "steps": steps,
        "eta": getattr(sampler, "eta", None),
        **({"variance": str(cfg.sampling_variance)} if cfg.get("sampling_variance") else {}),
        **({"clip": False} if getattr(sampler, "clip_denoised", True) is False else {}),
        "guidance": w,
        "features": metric.feature_extractor.kind,
        "n": int(cfg.n),
        "n_real": int(cfg.n_real),
        "sample_sets": len(seeds),
        "seeds": seeds,
        **combine_sets(sets, sample_metrics, names),
        "gen_img_per_s": float(np.mean([s["gen_img_per_s"] for s in sets])),
        "gen_img_per_s_steady": float(np.mean([s["gen_img_per_s_steady"] for s in sets])),
        "seconds": round(time.time() - started, 2),
    }


def sample_rows(
    network: Network, datamodule, extractor, settings, cfg, sample_metrics, guidances, save, done
) -> list[dict[str, Any]]:
    """One row per (steps, guidance) pair; ``save(rows)`` after each, so a stopped run keeps what it scored.
    ``done``: rows a stopped evaluation scored (by ``setting_key``), kept instead of scored again."""
    parts, device = network.parts, network.device
    real = real_features_for(datamodule, extractor, settings, device)
    metric = SampleQuality(
        extractor, real, kid_subset_size=settings.kid_subset_size, pr_num_samples=int(cfg.n)
    ).to(device)
    full_batch = largest_batch(int(cfg.n), int(cfg.batch_size))  # the one batch shape a compiled network sees
    names = score_names(extractor.kind)
    rows = []
    for steps in as_list(cfg.steps):
        sampler = sampler_for(
            sampler_from_config(cfg.sampler, network.spec["sampler"], steps, cfg.eta, parts.diffusion),
            parts.decoder,
        )
        for w in guidances:
            row = done.get(setting_key(repr(sampler), w))
            if row is None:
                generate = make_generate(network, sampler, w, full_batch)
                row = score_setting(metric, generate, sampler, w, parts, cfg, device, sample_metrics, names)
                print(json.dumps(row), flush=True)
            rows.append(row)
            save(rows)
    return rows


# ---------------------------------------------------------------------------------------------- evaluate
def evaluate(cfg: DictConfig, metrics: list[str], sample_metrics: list[str]) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` for ``metrics`` (``sample_metrics``: those computed on samples), the options
    already checked by :func:`diffusion_lab.evaluate.check_settings`; returns ``{"rows", "summary", "paths"}``."""
    device = resolve_device(str(cfg.device))
    ckpt_path = Path(cfg.ckpt_path).resolve()
    target, named = evaluation_dir(cfg, ckpt_path)
    earlier = partial_evaluation(target) if cfg.get("resume") else None
    parts, spec, ckpt, net, compiled = load_network(cfg, device)
    if cfg.get("sampling_variance") is not None:
        sampler = sampler_from_config(cfg.sampler, spec["sampler"], None, cfg.eta, parts.diffusion)
        parts = with_sampling_variance(parts, str(cfg.sampling_variance), sampler if sample_metrics else None)
    if "bpd" in metrics:
        check_bits_per_dim(spec, parts, sample_metrics)
    datamodule = build_datamodule(spec, cfg.data_root)
    datamodule.setup("test")
    guidances = guidance_scales(cfg, spec)
    settings = quality_settings(cfg)
    # The feature network first: a missing weights file fails now, not after a long bits/dim computation.
    extractor = build_extractor(settings).to(device) if sample_metrics else None
    out_dir = claim_dir(target, named)

    summary: dict[str, Any] = {"ckpt": str(ckpt_path), "device": str(device), "out_dir": str(out_dir)}
    summary["provenance"] = provenance(cfg, ckpt_path, ckpt, extractor, metrics, device)
    if earlier is not None:
        continue_summary(summary, earlier, out_dir)
    # Until the last setting is scored the table on disk says it is partial and how many settings it awaits.
    summary["settings"] = len(as_list(cfg.steps)) * len(guidances) if extractor is not None else 1
    start_record(summary, out_dir)
    if "bpd" in metrics and "bpd" not in summary:
        summary.update(bits_per_dim(parts, datamodule, cfg, device, out_dir))
        write_table([], summary, out_dir)  # the bound is kept if the sampling after it stops
    rows: list[dict[str, Any]] = []
    if extractor is not None:
        network = Network(parts, net, spec, device, compiled)
        rows = sample_rows(
            network,
            datamodule,
            extractor,
            settings,
            cfg,
            sample_metrics,
            guidances,
            save=lambda scored: write_table(scored, summary, out_dir),
            done=done_rows(earlier) if earlier is not None else {},
        )
        for row in rows:
            row.update({k: summary[k] for k in ("bpd",) if k in summary})
    else:
        rows.append({k: summary[k] for k in ("bpd", "bpd_stderr", "bpd_n", "bpd_clip_denoised")})
    paths = finish_record(
        rows, summary, extractor.kind if extractor is not None else None, guidances, out_dir
    )
    print_done(summary, paths)
    return {"rows": rows, "summary": summary, "paths": paths}


def start_record(summary: dict[str, Any], out_dir: Path) -> None:
    """Write the table as started and partial, so that an evaluation stopped before its first score is on record."""
    summary["complete"] = False
    # Who is scoring it, until it is complete: `status` tells a partial table still being scored from a stopped one.
    summary["process"] = {"pid": os.getpid(), "host": socket.gethostname()}
    write_table([], summary, out_dir)


def finish_record(
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    kind: str | None,
    guidances: list[float],
    out_dir: Path,
) -> dict[str, str]:
    """Write the complete table and the steps plot (``kind``: the features the samples were scored on, None
    where none were); the paths of everything written."""
    summary["complete"] = True
    del summary["process"]
    paths = write_table(rows, summary, out_dir)
    plot = write_steps_plot(rows, kind, guidances, out_dir) if kind is not None else None
    if plot is not None:
        paths["plot"] = str(plot)
    if "bpd" in summary:
        paths["vlb_csv"] = str(out_dir / "vlb_per_t.csv")
        paths["vlb_plot"] = str(out_dir / "vlb_per_t.png")
    return paths


def continue_summary(summary: dict[str, Any], earlier: dict[str, Any], out_dir: Path) -> None:
    """A continued evaluation's summary: the stopped one's provenance and bits/dim, after checking that this run
    measures the same thing, and this run named under ``continued``."""
    before = earlier["summary"]
    now = summary["provenance"]
    check_same_measurement(before["provenance"], now, out_dir)
    summary.update({k: v for k, v in before.items() if k.startswith("bpd")})
    summary["provenance"] = before["provenance"]
    this_run = {k: now[k] for k in ("started", "code_sha256", "device")}
    summary["continued"] = [*before.get("continued", []), this_run]
    scored = len(earlier.get("rows", []))
    print(f"continuing the evaluation in {out_dir}: {scored} setting(s) scored before, kept", flush=True)
