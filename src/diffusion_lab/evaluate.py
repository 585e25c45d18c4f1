"""Evaluate a checkpoint: FID / KID / precision-recall / IS per sampler setting, and bits/dim.

    python -m diffusion_lab.evaluate ckpt=PATH metrics=[fid,is,kid,pr,bpd] sampler=ddim steps=[10,20,50,100]
    python -m diffusion_lab.evaluate ckpt=PATH features=.cache/features/fashion_mnist.pt guidance=[0,1,2,4]

Writes ``evaluation.{md,csv,json}`` (one row per sampler setting), ``fid_vs_steps.png``, and for bits/dim
``vlb_per_t.csv`` (the mean VLB term at each t and its standard error) / ``vlb_per_t.png``; prints where they
are. Sampling runs under bf16 autocast on CUDA, as the training callbacks sample.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .build import load_checkpoint
from .cli import command
from .diffusion import calc_bpd_loop
from .diffusion.guidance import ClassifierFreeGuidance
from .errors import UserError
from .io import atomic_path
from .metrics.evaluation import (
    QualitySettings,
    build_extractor,
    largest_batch,
    real_features_for,
    score_generator,
)
from .metrics.quality import SampleQuality
from .module import compile_mode, compile_options
from .sample import choose_sampler, fixed_by_checkpoint, resolve_device

__all__ = ["evaluate", "main", "KNOWN_METRICS"]

KNOWN_METRICS = ("fid", "kid", "pr", "is", "bpd")


def _as_list(value: Any) -> list:
    if value is None:
        return [None]
    return list(value) if OmegaConf.is_list(value) or isinstance(value, list | tuple) else [value]


def build_datamodule(spec: dict, data_root: str | None):
    data_cfg = dict(spec.get("data") or {})
    if not data_cfg:
        raise UserError("this checkpoint stores no data config; it cannot be scored against real data")
    data_cfg["on_gpu"] = False
    if data_root:
        data_cfg["root"] = data_root
    return instantiate(data_cfg)


def bits_per_dim(parts, datamodule, cfg: DictConfig, device: torch.device, out_dir: Path) -> dict[str, Any]:
    """Full-bound bits/dim over ``bpd_n`` images, with its standard error, and the per-t VLB curve."""
    images = datamodule.real_images(cfg.bpd_split, int(cfg.bpd_n))
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
    totals, vb_sum, vb_sq = [], 0.0, 0.0
    for chunk in images.split(int(cfg.bpd_batch_size)):
        r = calc_bpd_loop(
            parts.diffusion, parts.net, chunk.to(device), progress=bool(cfg.progress), generator=gen
        )
        totals.append(r["total_bpd"].cpu())
        vb = r["vb"].cpu().double()
        vb_sum, vb_sq = vb_sum + vb.sum(0), vb_sq + (vb * vb).sum(0)
    total = torch.cat(totals).double()
    n = total.numel()
    vb_mean = vb_sum / n
    # per-t standard error of the mean over images (images are independent)
    vb_se = ((vb_sq - n * vb_mean**2).clamp(min=0) / (n - 1) / n).sqrt() if n > 1 else vb_mean * math.nan
    vb_mean = vb_mean.tolist()
    with atomic_path(out_dir / "vlb_per_t.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        # t = 1 is the decoder term L_0, t = T the last KL term L_{T-1} (Ho et al.'s 1-based timesteps)
        w.writerow(["t", "vb_bits_per_dim", "vb_stderr"])
        w.writerows([[t + 1, v, se] for t, (v, se) in enumerate(zip(vb_mean, vb_se.tolist()))])
    _plot(
        out_dir / "vlb_per_t.png",
        [(list(range(1, len(vb_mean) + 1)), vb_mean, "L_{t-1}")],
        "timestep t",
        "VLB term (bits/dim)",
        "Per-timestep VLB",
        logy=True,
    )
    stderr = float(total.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {"bpd": float(total.mean()), "bpd_stderr": stderr, "bpd_n": n}


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


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    metrics = [str(m) for m in _as_list(cfg.metrics) if m is not None]
    unknown = sorted(set(metrics) - set(KNOWN_METRICS))
    if unknown:
        raise UserError(f"metrics={unknown} unknown; choose from {list(KNOWN_METRICS)}")
    if not metrics:
        raise UserError(f"metrics= is empty; choose some of {list(KNOWN_METRICS)}")
    sample_metrics = [m for m in metrics if m != "bpd"]
    for key, least in (("n", 2), ("n_real", 2), ("batch_size", 1)):
        if sample_metrics and int(cfg[key]) < least:
            raise UserError(f"{key}={cfg[key]} is invalid: it must be >= {least}")
    for key in ("bpd_n", "bpd_batch_size"):
        if "bpd" in metrics and int(cfg[key]) < 1:
            raise UserError(f"{key}={cfg[key]} is invalid: it must be >= 1")
    device = resolve_device(str(cfg.device))
    mode = compile_mode(cfg.get("compile"))
    compiled = mode is not None
    options = compile_options(mode, bool(cfg.get("channels_last"))) if compiled else None
    parts, spec, _ = load_checkpoint(cfg.ckpt, map_location="cpu")
    net = parts.net.to(device)
    if cfg.get("channels_last"):
        net = net.to(memory_format=torch.channels_last)
    if compiled:
        net = torch.compile(net, options=options)
    datamodule = build_datamodule(spec, cfg.data_root)
    datamodule.setup("test")
    ckpt_path = Path(cfg.ckpt).resolve()
    out_dir = Path(cfg.out_dir) if cfg.out_dir else ckpt_path.parent.parent / "evaluation" / ckpt_path.stem
    shape = tuple(spec["data_shape"])
    num_classes = spec.get("num_classes")
    guidances = [float(g or 0.0) for g in _as_list(cfg.guidance)]
    if any(guidances) and not num_classes:
        raise UserError("guidance= needs a class-conditional checkpoint (trained with conditional=true)")

    settings = QualitySettings(
        features=str(cfg.features),
        inception_weights=cfg.inception_weights,
        allow_download=bool(cfg.allow_download),
        real_split=str(cfg.real_split),
        n_real=int(cfg.n_real),
        cache_dir=str(cfg.cache_dir),
        batch_size=int(cfg.batch_size),
        kid_subset_size=min(1000, int(cfg.n), int(cfg.n_real)),
    )
    # The feature network first: a missing weights file fails now, not after a long bits/dim computation.
    extractor = build_extractor(settings).to(device) if sample_metrics else None
    out_dir.mkdir(parents=True, exist_ok=True)

    summary: dict[str, Any] = {"ckpt": str(ckpt_path), "device": str(device)}
    if "bpd" in metrics:
        summary.update(bits_per_dim(parts, datamodule, cfg, device, out_dir))

    rows: list[dict[str, Any]] = []
    if extractor is not None:
        real = real_features_for(datamodule, extractor, settings, device)
        metric = SampleQuality(
            extractor, real, kid_subset_size=settings.kid_subset_size, pr_num_samples=int(cfg.n)
        )
        metric = metric.to(device)
        full_batch = largest_batch(
            int(cfg.n), int(cfg.batch_size)
        )  # the one batch shape a compiled network sees
        for steps in _as_list(cfg.steps):
            if isinstance(cfg.sampler, DictConfig):  # sampler=ddpm|ddim: the node of conf/sampler/<name>.yaml
                chosen = OmegaConf.to_container(cfg.sampler, resolve=True)
                sampler = choose_sampler(chosen, None, steps, cfg.eta)
            else:
                sampler = choose_sampler(spec["sampler"], cfg.sampler, steps, cfg.eta)
            for w in guidances:

                def generate(b: int, gen: torch.Generator, sampler=sampler, w=w) -> torch.Tensor:
                    # A compiled network sees one batch shape: a batch one smaller than the largest (the batches
                    # are balanced, see rank_batches) is generated at full size and cut (a new shape would
                    # recompile in the middle of the run).
                    keep, b = b, (max(b, full_batch) if compiled else b)
                    noise = torch.randn((b, *shape), device=device, generator=gen)
                    model = net
                    if num_classes:
                        y = torch.randint(0, num_classes, (b,), device=device, generator=gen)
                        learned = parts.diffusion.variance.learned
                        model = ClassifierFreeGuidance(net, y, w, num_classes, shape[0] if learned else None)
                    # bf16 autocast on CUDA, as DiffusionModule.generate samples during training
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                        x = sampler.sample(
                            parts.diffusion, model, noise.shape, device, noise=noise, generator=gen
                        )
                    return x[:keep].clamp(-1, 1).float()

                started = time.time()
                scores = score_generator(
                    metric,
                    generate,
                    int(cfg.n),
                    int(cfg.batch_size),
                    device,
                    int(cfg.seed),
                    bool(cfg.progress),
                )
                row = {
                    "sampler": sampler.name,
                    "steps": sampler.num_evaluations(parts.diffusion),
                    "eta": getattr(sampler, "eta", None),
                    "guidance": w,
                    "n": int(cfg.n),
                    **{k: v for k, v in scores.items() if _wanted(k, sample_metrics)},
                    "gen_img_per_s": scores["gen_img_per_s"],
                    "gen_img_per_s_steady": scores["gen_img_per_s_steady"],
                    "seconds": round(time.time() - started, 2),
                }
                if "bpd" in summary:
                    row["bpd"] = summary["bpd"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    if not rows and "bpd" in summary:
        rows.append({k: summary[k] for k in ("bpd", "bpd_stderr", "bpd_n")})
    paths = write_table(rows, summary, out_dir)
    if sample_metrics and "fid" in sample_metrics and len(rows) > 1:
        series = []
        for w in guidances:
            pts = sorted((r["steps"], r["fid"]) for r in rows if r["guidance"] == w)
            series.append(([p[0] for p in pts], [p[1] for p in pts], f"w={w:g}"))
        _plot(
            out_dir / "fid_vs_steps.png",
            series,
            "sampling steps (network evaluations)",
            "FID",
            "FID vs steps",
            logx=True,
        )
        paths["plot"] = str(out_dir / "fid_vs_steps.png")
    if "bpd" in summary:
        paths["vlb_csv"] = str(out_dir / "vlb_per_t.csv")
        paths["vlb_plot"] = str(out_dir / "vlb_per_t.png")
    print("\n== diffusion_lab.evaluate done ==")
    if "bpd" in summary:
        print(f"bits/dim : {summary['bpd']:.4f} ± {summary['bpd_stderr']:.4f} (n={summary['bpd_n']})")
    for key, path in paths.items():
        print(f"{key:<9}: {path}")
    return {"rows": rows, "summary": summary, "paths": paths}


def _wanted(key: str, metrics: list[str]) -> bool:
    prefix = {"fid": ("fid",), "kid": ("kid_",), "pr": ("precision", "recall"), "is": ("is_",)}
    return any(key.startswith(p) for m in metrics for p in prefix.get(m, ()))


def write_table(rows: list[dict[str, Any]], summary: dict[str, Any], out_dir: Path) -> dict[str, str]:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(out_dir / "evaluation.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    with atomic_path(out_dir / "evaluation.json") as tmp:
        tmp.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = [f"# Evaluation of `{summary['ckpt']}`", ""]
    if "bpd" in summary:
        lines += [
            f"Bits/dim (full bound, n={summary['bpd_n']}): **{summary['bpd']:.4f} ± {summary['bpd_stderr']:.4f}**",
            "",
        ]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    with atomic_path(out_dir / "evaluation.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return {
        "table_md": str(out_dir / "evaluation.md"),
        "table_csv": str(out_dir / "evaluation.csv"),
        "json": str(out_dir / "evaluation.json"),
    }


@command("evaluate", usage=__doc__, unknown_key=fixed_by_checkpoint)
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
