"""Summarise a sweep in one table and a few plots.

    python -m diffusion_lab.report outputs/train/multirun/<time>            # -> <that folder>/report.{md,html}
    python -m diffusion_lab.report outputs/studies/ddpm_table2 --out reports/ddpm_table2

Reads every job folder under the path (one with ``.hydra/overrides.yaml``; several sweeps below one folder are
read together): its overrides, its CSV log (``csv/metrics.csv``), the launcher's ``sweep_status.json``
(status, wall time) and any ``evaluation/*/evaluation.json`` from ``python -m diffusion_lab.evaluate``.
Writes ``report.md`` (plots as files in ``report_plots/``) and a self-contained ``report.html`` (plots and
sample grids embedded): one row per job — the overrides that differ between jobs, FID / IS / bits/dim,
validation loss, training speed, wall time, status — sorted by FID when there is one, else by validation
loss, with the best value of each column marked ★; plots of FID over training, validation loss over
training, the loss by timestep bucket, and FID against sampling steps.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import UserError, friendly_errors
from .io import atomic_path

__all__ = ["Job", "find_jobs", "write_report", "main"]

STATUS_FILE = "sweep_status.json"
PLOTS_DIR = "report_plots"
NUM_BUCKETS = 10
WHAT_IT_NEEDS = (
    "a multirun folder (e.g. outputs/<task>/multirun/<time>, from `python -m diffusion_lab.train -m ...`) "
    "holding one folder per job with .hydra/overrides.yaml and csv/metrics.csv"
)


@dataclass
class Job:
    dir: Path
    overrides: list[str] = field(default_factory=list)
    status: str = "unknown"
    exit_code: int | None = None
    wall_time_s: float | None = None
    log: str | None = None
    num: int | None = None
    last: dict[str, float] = field(default_factory=dict)  # last logged value of each CSV column
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # (step, value) of some columns
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # {"name", "summary", "rows"}
    label: str = ""

    # ---- the table's values
    def best_eval_row(self) -> dict[str, Any] | None:
        rows = [(e["name"], r) for e in self.evaluations for r in e["rows"] if _num(r.get("fid")) is not None]
        if not rows:
            return None
        name, row = min(rows, key=lambda nr: nr[1]["fid"])
        return {**row, "_eval": name}

    def value(self, key: str) -> float | None:
        row = self.best_eval_row()
        if key == "fid":
            return _num(row["fid"]) if row else self.last.get("metrics/fid")
        if key == "is":
            return _num(row.get("is_mean")) if row else self.last.get("metrics/is_mean")
        if key == "bpd":
            values = [_num(e["summary"].get("bpd")) for e in self.evaluations]
            values = [v for v in values if v is not None]
            return min(values) if values else None
        if key == "val_bpd":
            # the one-timestep Monte-Carlo estimate of the bound (older metrics files name it val/bpd_estimate)
            return self.last.get("val/bpd_one_t_mc", self.last.get("val/bpd_estimate"))
        if key == "val_loss":
            return self.last.get("val/loss")
        if key == "img_per_s":
            return self.last.get("perf/train_img_per_s")
        if key == "steps":
            return self.last.get("step")
        if key == "wall_time":
            return self.wall_time_s
        raise KeyError(key)

    def fid_at(self) -> str:
        row = self.best_eval_row()
        if row:
            eta = f" η={row['eta']:g}" if _num(row.get("eta")) is not None else ""
            return f"{row.get('sampler', '?')}{eta}, {row.get('steps', '?')} steps"
        points = self.series.get("metrics/fid")
        return f"training, step {points[-1][0]}" if points else ""


# (key, header, better: "min" | "max" | None, format)
COLUMNS: list[tuple[str, str, str | None, str]] = [
    ("fid", "FID", "min", "{:.4g}"),
    ("is", "IS", "max", "{:.4g}"),
    ("bpd", "bits/dim", "min", "{:.4g}"),
    ("val_bpd", "val bits/dim (one-t MC est.)", "min", "{:.4g}"),
    ("val_loss", "val loss", "min", "{:.4g}"),
    ("img_per_s", "train img/s", "max", "{:.0f}"),
    ("steps", "last logged step", None, "{:.0f}"),
    ("wall_time", "wall time (s)", None, "{:.0f}"),
]


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# ------------------------------------------------------------------------------------------------- reading
def _read_overrides(path: Path) -> list[str]:
    from omegaconf import OmegaConf

    try:
        return [str(o) for o in OmegaConf.to_container(OmegaConf.load(path))]  # type: ignore[union-attr]
    except Exception:
        return []


def _read_csv(job: Job) -> None:
    path = job.dir / "csv" / "metrics.csv"
    if not path.is_file():
        return
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = _num(row.get("step"))
            for key, raw in row.items():
                value = _num(raw)
                if key is None or value is None:
                    continue
                job.last[key] = value
                if step is not None and key in ("metrics/fid", "val/loss"):
                    job.series.setdefault(key, []).append((int(step), value))


def _read_evaluations(job: Job) -> None:
    for path in sorted(job.dir.glob("evaluation/*/evaluation.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        job.evaluations.append(
            {"name": path.parent.name, "summary": data.get("summary") or {}, "rows": data.get("rows") or []}
        )


def _status_records(root: Path) -> dict[Path, dict[str, Any]]:
    """Job records of every sweep_status.json under ``root`` (the gpu_pool launcher's), by job folder."""
    records: dict[Path, dict[str, Any]] = {}
    for status_file in sorted(root.rglob(STATUS_FILE)):
        try:
            status = json.loads(status_file.read_text())
        except (OSError, ValueError):
            continue
        for rec in status.get("jobs", []):
            job_dir = Path(rec.get("dir", ""))
            if not job_dir.is_dir():  # the sweep was moved or copied: the same place below this file
                try:
                    job_dir = status_file.parent / job_dir.relative_to(status.get("sweep_dir", ""))
                except ValueError:
                    job_dir = status_file.parent / job_dir.name
            records[job_dir.resolve()] = rec
    return records


def find_jobs(root: str | Path) -> list[Job]:
    """Every job under ``root``: folders with .hydra/overrides.yaml, and jobs a sweep_status.json lists."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} does not exist or is not a folder; pass {WHAT_IT_NEEDS}")
    records = _status_records(root)
    dirs = {p.parent.parent.resolve() for p in root.rglob(".hydra/overrides.yaml")}
    dirs |= set(records)
    jobs = []
    for job_dir in sorted(dirs):
        rec = records.get(job_dir, {})
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        job = Job(dir=job_dir)
        job.overrides = _read_overrides(overrides_file) if overrides_file.is_file() else []
        job.overrides = job.overrides or [str(o) for o in rec.get("overrides", [])]
        job.status = str(rec.get("status", "unknown"))
        job.exit_code = rec.get("exit_code")
        job.wall_time_s = _num(rec.get("duration_s"))
        job.log = rec.get("log")
        job.num = rec.get("num")
        _read_csv(job)
        _read_evaluations(job)
        jobs.append(job)
    if not jobs:
        raise UserError(f"{root} holds no jobs; pass {WHAT_IT_NEEDS}")
    _label_jobs(jobs, root)
    return jobs


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _label_jobs(jobs: list[Job], root: Path) -> list[str]:
    """Label each job by the overrides that differ between jobs; returns the overrides common to all."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for o in job.overrides:
            values.setdefault(_key(o), set()).add(o)
    # (One job: all its overrides are "common", and it is labelled by its folder.)
    common = [o for o in (jobs[0].overrides if jobs else []) if all(o in j.overrides for j in jobs)]
    for job in jobs:
        varying = [o for o in job.overrides if o not in common and not _key(o).startswith("hydra.")]
        job.label = " ".join(varying) if varying else _folder_label(job, root)
    return common


def _folder_label(job: Job, root: Path) -> str:
    """The job folder relative to the report's root, its own name cut to the launcher's job number
    (`model/0_loss=simple,...` -> `model/#0`): the overrides are in the common-overrides line already."""
    rel = (
        job.dir.relative_to(root.resolve()) if job.dir.is_relative_to(root.resolve()) else Path(job.dir.name)
    )
    num, sep, _ = rel.name.partition("_")
    return str(rel.with_name(f"#{num}")) if sep and num.isdigit() else str(rel)


def _sort(jobs: list[Job]) -> tuple[list[Job], str]:
    key = "fid" if any(j.value("fid") is not None for j in jobs) else "val_loss"

    def order(j: Job) -> tuple:
        v = j.value(key)
        num = j.num if j.num is not None else math.inf
        return (j.status in ("FAILED", "INTERRUPTED"), v is None, v or 0.0, num, j.label)

    return sorted(jobs, key=order), key


# ------------------------------------------------------------------------------------------------- plots
def _plots(jobs: list[Job], out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}

    def save(fig, name: str, title: str) -> None:
        fig.tight_layout()
        path = out / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        made[title] = path

    def legend(ax) -> None:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")

    for key, title, ylabel, name in [
        ("metrics/fid", "FID over training", "FID", "fid_over_training.png"),
        ("val/loss", "Validation loss over training", "val loss", "val_loss_over_training.png"),
    ]:
        series = [(j.label, j.series[key]) for j in jobs if j.series.get(key)]
        if series:
            fig, ax = plt.subplots(figsize=(7, 4.2))
            for label, points in series:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=label)
            ax.set(xlabel="training step", ylabel=ylabel, title=title)
            ax.grid(alpha=0.3)
            legend(ax)
            save(fig, name, title)

    buckets = [f"train_bucket/loss_t{k}" for k in range(NUM_BUCKETS)]
    bucketed = [j for j in jobs if any(b in j.last for b in buckets)]
    if bucketed:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        xs = [(k + 0.5) / NUM_BUCKETS for k in range(NUM_BUCKETS)]
        for j in bucketed:
            # An empty bucket (no sample of t in it since the last log) is logged as exactly 0: a gap here.
            ys = [j.last.get(b) or math.nan for b in buckets]
            ax.plot(xs, ys, marker="o", ms=3, label=j.label)
        ax.set(xlabel="timestep t / T (bucket centre)", ylabel="training loss (last logged)")
        ax.set_title("Loss by timestep bucket")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        legend(ax)
        save(fig, "loss_by_timestep.png", "Loss by timestep bucket")

    curves = []
    for j in jobs:
        for e in j.evaluations:
            groups: dict[tuple, list[tuple[float, float]]] = {}
            for r in e["rows"]:
                steps, fid = _num(r.get("steps")), _num(r.get("fid"))
                if steps is None or fid is None:
                    continue
                setting = (r.get("sampler"), _num(r.get("eta")), _num(r.get("guidance")) or 0.0)
                groups.setdefault(setting, []).append((steps, fid))
            for (sampler, eta, w), points in groups.items():
                label = " ".join(
                    x
                    for x in (
                        j.label if len(jobs) > 1 else "",
                        str(sampler or e["name"]),
                        f"η={eta:g}" if eta is not None else "",
                        f"w={w:g}" if w else "",
                    )
                    if x
                )
                curves.append((label, sorted(points)))
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, points in curves:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=label)
        ax.set(
            xlabel="sampling steps (network evaluations)", ylabel="FID", title="FID against sampling steps"
        )
        ax.set_xscale("log")
        ticks = sorted({p[0] for _, points in curves for p in points})
        if len(ticks) <= 12:
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        legend(ax)
        save(fig, "fid_vs_steps.png", "FID against sampling steps")
    return made


# ------------------------------------------------------------------------------------------------- writing
def _table(jobs: list[Job]) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Header, cell texts and which cells are the best of their column."""
    cols = [c for c in COLUMNS if any(j.value(c[0]) is not None for j in jobs)]
    show_fid_at = any(j.fid_at() for j in jobs)
    header = ["#", "job", "status", *[c[1] for c in cols]]
    if show_fid_at:
        header.insert(3 + [c[0] for c in cols].index("fid") + 1, "FID at")
    best: dict[str, float] = {}
    for key, _, better, _ in cols:
        vals = [v for j in jobs if (v := j.value(key)) is not None]
        if better and len(vals) > 1 and len(set(vals)) > 1:
            best[key] = min(vals) if better == "min" else max(vals)
    rows, marks = [], []
    for i, job in enumerate(jobs, 1):
        cells, flags = [str(i), job.label, job.status], [False, False, False]
        for key, _, _, fmt in cols:
            v = job.value(key)
            cells.append("" if v is None else fmt.format(v))
            flags.append(v is not None and key in best and v == best[key])
            if key == "fid" and show_fid_at:
                cells.append(job.fid_at())
                flags.append(False)
        rows.append(cells)
        marks.append(flags)
    return header, rows, marks


def _eval_table(jobs: list[Job]) -> tuple[list[str], list[list[str]]]:
    keys = ["sampler", "eta", "steps", "guidance", "fid", "is_mean", "kid_mean", "precision", "recall", "bpd"]
    present = [k for k in keys if any(k in r for j in jobs for e in j.evaluations for r in e["rows"])]
    rows = []
    for j in jobs:
        for e in j.evaluations:
            for r in e["rows"]:
                cells = [j.label, e["name"]]
                for k in present:
                    v = r.get(k)
                    cells.append(f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v)))
                rows.append(cells)
    return ["job", "evaluation", *present], rows


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _image_b64(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def write_report(
    root: str | Path, out_dir: str | Path | None = None, title: str | None = None
) -> dict[str, Path]:
    root = Path(root)
    jobs = find_jobs(root)
    common = _label_jobs(jobs, root)
    jobs, sort_key = _sort(jobs)
    out = Path(out_dir) if out_dir else root
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(jobs, out / PLOTS_DIR)
    header, rows, marks = _table(jobs)
    eval_header, eval_rows = _eval_table(jobs)
    samples = [
        (j, j.dir / "samples" / "final.png") for j in jobs if (j.dir / "samples" / "final.png").is_file()
    ]
    title = title or f"Sweep report: {root.resolve().name}"
    n_failed = sum(j.status not in ("COMPLETED", "unknown") for j in jobs)
    sorted_by = "FID (lower is better)" if sort_key == "fid" else "validation loss (lower is better)"
    intro = [
        f"Sweep: `{root.resolve()}` — {len(jobs)} job(s)"
        + (f", {n_failed} not completed" if n_failed else ""),
        f"Sorted by {sorted_by}; ★ marks the best value of a column.",
        "FID / IS: the best row of the job's `evaluate` runs when there are any, else the last value logged in "
        "training; bits/dim: the full bound from `evaluate`; val bits/dim (one-t MC est.): validation's "
        "one-timestep Monte-Carlo estimate of the unclipped bound (noisy; not the full bound).",
    ]
    if common:
        intro.append("Common overrides: " + " ".join(f"`{o}`" for o in common))

    # ---- markdown
    md = [f"# {title}", "", *[f"{line}  " for line in intro], ""]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cells, flags in zip(rows, marks):
        md.append(
            "| "
            + " | ".join(f"**{_md_cell(c)} ★**" if f else _md_cell(c) for c, f in zip(cells, flags))
            + " |"
        )
    if eval_rows:
        md += [
            "",
            "## Evaluations",
            "",
            "| " + " | ".join(eval_header) + " |",
            "|" + "---|" * len(eval_header),
        ]
        md += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in eval_rows]
    for name, path in plots.items():
        md += ["", f"## {name}", "", f"![{name}]({quote(PLOTS_DIR + '/' + path.name)})"]
    if samples:
        md += ["", "## Final samples", ""]
        for j, path in samples:
            md += [f"**{j.label}**", "", f"![{j.label}]({quote(os.path.relpath(path, out))})", ""]
    failed = [j for j in jobs if j.status in ("FAILED", "INTERRUPTED")]
    if failed:
        md += ["", "## Failed jobs", ""] + [f"- {j.label}: exit {j.exit_code}, log `{j.log}`" for j in failed]
    md_path = out / "report.md"
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(md) + "\n")

    # ---- html (self-contained)
    esc = html.escape
    h = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}",
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}",
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}",
        "td:nth-child(2),th:nth-child(2){text-align:left}th{background:#f3f3f3}",
        "td.best{font-weight:bold;background:#e8f5e9}img{max-width:100%}code{background:#f6f6f6}",
        ".samples{display:flex;flex-wrap:wrap;gap:1em}.samples figure{margin:0;max-width:300px}",
        "</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    h += [f"<p>{esc(line).replace('`', '')}</p>" for line in intro]
    h.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in header) + "</tr>")
    for cells, flags in zip(rows, marks):
        h.append(
            "<tr>"
            + "".join(
                f"<td class='best'>{esc(c)} ★</td>" if f else f"<td>{esc(c)}</td>"
                for c, f in zip(cells, flags)
            )
            + "</tr>"
        )
    h.append("</table>")
    if eval_rows:
        h.append(
            "<h2>Evaluations</h2><table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in eval_header) + "</tr>"
        )
        h += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in eval_rows]
        h.append("</table>")
    for name, path in plots.items():
        h.append(f"<h2>{esc(name)}</h2><img alt='{esc(name)}' src='{_image_b64(path)}'>")
    if samples:
        h.append("<h2>Final samples</h2><div class='samples'>")
        for j, path in samples:
            h.append(
                f"<figure><img alt='{esc(j.label)}' src='{_image_b64(path)}'>"
                f"<figcaption>{esc(j.label)}</figcaption></figure>"
            )
        h.append("</div>")
    if failed:
        h.append("<h2>Failed jobs</h2><ul>")
        h += [
            f"<li>{esc(j.label)}: exit {j.exit_code}, log <code>{esc(str(j.log))}</code></li>" for j in failed
        ]
        h.append("</ul>")
    h.append("</body></html>")
    html_path = out / "report.html"
    with atomic_path(html_path) as tmp:
        tmp.write_text("\n".join(h) + "\n")
    return {"markdown": md_path, "html": html_path, **{name: path for name, path in plots.items()}}


@friendly_errors
def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_lab.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "sweep", help="the multirun folder (outputs/<task>/multirun/<time>) or a folder of them"
    )
    parser.add_argument("--out", default=None, help="where to write the report (default: the sweep folder)")
    parser.add_argument("--title", default=None, help="the report's title")
    args = parser.parse_args(argv)
    paths = write_report(args.sweep, args.out, args.title)
    print("== diffusion_lab.report done ==")
    print(f"report   : {paths['html']}")
    print(f"markdown : {paths['markdown']}")
    for name, path in paths.items():
        if name not in ("markdown", "html"):
            print(f"plot     : {path}  ({name})")
    return paths


if __name__ == "__main__":
    main()
