"""Evaluate a checkpoint: FID / KID / precision-recall / IS per sampler setting, and bits/dim.

    python -m diffusion_lab.evaluate ckpt_path=PATH metrics=[fid,is,kid,pr,bpd] sampler=ddim steps=[10,20,50,100]
    python -m diffusion_lab.evaluate ckpt_path=PATH features=.cache/features/fashion_mnist.pt guidance=[0,1,2,4]
    python -m diffusion_lab.evaluate ckpt_path=PATH metrics=[fid] sample_sets=3     # FID's own spread over 3 sets

Every evaluation writes into a folder of its own, never reused: ``out_dir`` when given (refused when it already
holds files), else a new ``<run>/evaluation/<checkpoint>-<YYYYmmdd-HHMMSS>``; ``out_dir=<a stopped evaluation's
folder> resume=true`` continues that one (``evaluate_resume``). The folder holds
``evaluation.{md,csv,json}`` (one row per sampler setting; the JSON's ``provenance`` records how it was measured:
feature network, n real / n generated, sampler, guidance, seeds, checkpoint path / step / sha256, package
versions), ``<fid or fd_classifier>_vs_steps.png``, and for bits/dim ``vlb_per_t.csv`` (the mean VLB term at
each t and its standard error) / ``vlb_per_t.png``; the end of the run prints where they are.

On Inception features the scores are called fid / kid_* / is_*; on a domain classifier's features
(``features=PATH``) fd_classifier / kd_classifier_* / classifier_score_*, which are not comparable with
published FIDs. Sampling runs under bf16 autocast on CUDA, as the training callbacks sample.
"""

from __future__ import annotations

import csv
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
from .cli import checkpoint_argument, command
from .compile_policy import compile_mode, compile_options, use_compile_cache, use_torch_ptxas
from .data.datasets import SPLITS
from .diffusion import calc_bpd_loop
from .diffusion.guidance import ClassifierFreeGuidance
from .errors import UserError, check_types, require_writable, unwritable_reason
from .evaluate_resume import check_same_measurement, done_rows, partial_evaluation, setting_key
from .io import atomic_path, file_sha256
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
from .sample import check_eta, fixed_by_checkpoint, resolve_device, sampler_from_config
from .samplers import Sampler
from .sampling_variance import with_sampling_variance
from .versions import package_versions

__all__ = ["evaluate", "main", "KNOWN_METRICS"]

KNOWN_METRICS = ("fid", "kid", "pr", "is", "bpd")
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


def _as_list(value: Any) -> list:
    if value is None:
        return [None]
    return list(value) if OmegaConf.is_list(value) or isinstance(value, list | tuple) else [value]


# ------------------------------------------------------------------------------------------------- settings
def check_settings(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """The metrics asked for (and those of them computed on samples), refusing bad values before any work."""
    metrics = [str(m) for m in _as_list(cfg.metrics) if m is not None]
    unknown = sorted(set(metrics) - set(KNOWN_METRICS))
    if unknown:
        raise UserError(f"metrics={unknown} unknown; choose from {list(KNOWN_METRICS)}")
    if not metrics:
        raise UserError(f"metrics= is empty; choose some of {list(KNOWN_METRICS)}")
    sample_metrics = [m for m in metrics if m != "bpd"]
    check_option_types(cfg)
    for key, least in (("n", 2), ("n_real", 2), ("batch_size", 1), ("sample_sets", 1)):
        if sample_metrics and int(cfg[key]) < least:
            raise UserError(f"{key}={cfg[key]} is invalid: it must be >= {least}")
    for key in ("bpd_n", "bpd_batch_size"):
        if "bpd" in metrics and int(cfg[key]) < 1:
            raise UserError(f"{key}={cfg[key]} is invalid: it must be >= 1")
    if sample_metrics:
        check_sampling_settings(cfg)
    return metrics, sample_metrics


def check_option_types(cfg: DictConfig) -> None:
    """Each value of the right type (``eta=[2]``, ``guidance=[abc]`` otherwise fail inside a sampler with a
    traceback), and the seed a valid generator seed."""
    counts = ("n", "n_real", "batch_size", "sample_sets", "bpd_n", "bpd_batch_size")
    check_types(cfg, {"seed": (int,), "eta": (float, None), **{key: (int,) for key in counts}})
    for g in _as_list(cfg.guidance):
        if g is not None and (isinstance(g, bool) or not isinstance(g, int | float)):
            raise UserError(f"guidance={g!r} is invalid: each entry must be a number (0: no guidance)")
    check_eta(cfg.eta)
    if not 0 <= int(cfg.seed) < 2**32:
        raise UserError(f"seed={cfg.seed} is out of range; it must be an integer in [0, 2**32)")


def check_sampling_settings(cfg: DictConfig) -> None:
    """``real_split`` and ``steps`` before the feature network or a checkpoint is loaded (a missing weights
    file would otherwise be reported first, and a bad value only after it was fixed)."""
    if str(cfg.real_split) not in SPLITS:
        raise UserError(f"real_split={cfg.real_split!r} is not a split; choose one of {list(SPLITS)}")
    for steps in _as_list(cfg.steps):
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise UserError(
                f"steps={steps!r} is invalid: each entry must be an integer >= 1, or null (the trained sampler's)"
            )


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
    guidances = [float(g or 0.0) for g in _as_list(cfg.guidance)]
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
            "guidance": [float(g or 0.0) for g in _as_list(cfg.guidance)],
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


def write_vlb_curve(vb: torch.Tensor, out_dir: Path) -> None:
    """``vlb_per_t.csv`` (each term's mean over the (N, T) images and its standard error) and its plot."""
    n = vb.shape[0]
    mean = vb.mean(0)
    # per-t standard error of the mean over images (images are independent)
    se = vb.std(0, unbiased=True) / math.sqrt(n) if n > 1 else mean * math.nan
    with atomic_path(out_dir / "vlb_per_t.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        # t = 1 is the decoder term L_0, t = T the last KL term L_{T-1} (Ho et al.'s 1-based timesteps)
        w.writerow(["t", "vb_bits_per_dim", "vb_stderr"])
        w.writerows([[t + 1, v, e] for t, (v, e) in enumerate(zip(mean.tolist(), se.tolist()))])
    ts = list(range(1, len(mean) + 1))
    _plot(
        out_dir / "vlb_per_t.png",
        [(ts, mean.tolist(), "L_{t-1}")],
        "timestep t",
        "VLB term (bits/dim)",
        "Per-timestep VLB",
        logy=True,
    )


def _plot(
    path: Path, series, xlabel: str, ylabel: str, title: str, logx: bool = False, logy: bool = False
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for xs, ys, label in series:
        ax.plot(xs, ys, marker="o" if len(xs) < 50 else None, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


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
    for steps in _as_list(cfg.steps):
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


# -------------------------------------------------------------------------------------------------- tables
def write_table(rows: list[dict[str, Any]], summary: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """``evaluation.csv`` / ``.json`` / ``.md`` in ``out_dir``; returns their paths."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(out_dir / "evaluation.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    with atomic_path(out_dir / "evaluation.json") as tmp:
        tmp.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    with atomic_path(out_dir / "evaluation.md") as tmp:
        tmp.write_text(markdown(rows, summary, columns))
    return {
        "table_md": str(out_dir / "evaluation.md"),
        "table_csv": str(out_dir / "evaluation.csv"),
        "json": str(out_dir / "evaluation.json"),
    }


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any], columns: list[str]) -> str:
    lines = [f"# Evaluation of `{summary['ckpt']}`", "", *_provenance_lines(summary.get("provenance"))]
    if summary.get("complete") is False:
        lines += [f"**Partial**: {len(rows)} of {summary['settings']} settings scored so far.", ""]
    if "bpd" in summary:
        clipped = {True: ", x̂_0 clipped to [-1, 1]", False: ", unclipped"}.get(
            summary.get("bpd_clip_denoised"), ""
        )
        lines += [
            f"Bits/dim (full bound{clipped}, n={summary['bpd_n']}): "
            f"**{summary['bpd']:.4f} ± {summary['bpd_stderr']:.4f}**",
            "",
        ]
    if rows:
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _provenance_lines(prov: dict[str, Any] | None) -> list[str]:
    if not prov:
        return []
    ckpt = prov["checkpoint"]
    lines = [f"- checkpoint: step {ckpt['global_step']}, sha256 `{ckpt['sha256']}`"]
    if "features" in prov:
        feats = prov["features"]
        where = feats.get("path") or feats.get("weights")
        lines += [
            f"- features: {feats['name']}, `{where}` (sha256 `{feats['sha256']}`)",
            f"- n real: {prov['n_real']} ({prov['real_split']} split); n generated: {prov['n_generated']} "
            f"per set, {prov['sample_sets']} set(s), seeds {_fmt(prov['seeds'])}",
        ]
    versions = ", ".join(f"{k} {v}" for k, v in prov["versions"].items() if v)
    return [*lines, f"- versions: {versions}", ""]


def write_steps_plot(
    rows: list[dict[str, Any]], kind: str, guidances: list[float], out_dir: Path
) -> Path | None:
    """The Fréchet distance against the number of sampling steps, one line per guidance scale (two rows or
    more); named after the metric, ``fid_vs_steps.png`` or ``fd_classifier_vs_steps.png``."""
    name = score_names(kind)["fid"]
    if len(rows) < 2 or name not in rows[0]:
        return None
    series = []
    for w in guidances:
        pts = sorted((r["steps"], r[name]) for r in rows if r["guidance"] == w)
        series.append(([p[0] for p in pts], [p[1] for p in pts], f"w={w:g}"))
    label = "FID (Inception)" if kind == "inception" else "FD on classifier features (not FID)"
    path = out_dir / f"{name}_vs_steps.png"
    _plot(path, series, "sampling steps (network evaluations)", label, f"{label} vs steps", logx=True)
    return path


def print_done(summary: dict[str, Any], paths: dict[str, str]) -> None:
    print("\n== diffusion_lab.evaluate done ==")
    if "bpd" in summary:
        print(f"bits/dim : {summary['bpd']:.4f} ± {summary['bpd_stderr']:.4f} (n={summary['bpd_n']})")
    for key, path in paths.items():
        print(f"{key:<9}: {path}")


# ---------------------------------------------------------------------------------------------- evaluate
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` (alias ``ckpt``; see the module docstring); returns ``{"rows", "summary",
    "paths"}``."""
    metrics, sample_metrics = check_settings(cfg)
    device = resolve_device(str(cfg.device))
    ckpt_path = Path(checkpoint_argument(cfg, required=True)).resolve()
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
    summary["settings"] = len(_as_list(cfg.steps)) * len(guidances) if extractor is not None else 1
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


@command("evaluate", usage=__doc__, unknown_key=fixed_by_checkpoint)
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
