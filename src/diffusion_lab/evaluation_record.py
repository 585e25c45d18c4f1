"""What an evaluation writes: its table (``evaluation.{csv,json,md}``), the Fréchet distance against sampling
steps, the per-timestep VLB curve of bits/dim, and the closing lines saying where they are."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .io import atomic_path
from .score_names import score_names

if TYPE_CHECKING:
    import torch

__all__ = ["write_table", "markdown", "write_steps_plot", "write_vlb_curve", "print_done"]


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
