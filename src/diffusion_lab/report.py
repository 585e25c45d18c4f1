"""Summarise a sweep in tables and plots.

    python -m diffusion_lab.report outputs/<task_name>/multirun/<time>        # -> <that folder>/report.{md,html}
    python -m diffusion_lab.report outputs/studies/ddpm_table2 --out reports/ddpm_table2
    python -m diffusion_lab.report DIR --baseline schedule=linear           # differences from that cell
    python -m diffusion_lab.report DIR --baseline loss=simple --baseline loss=hybrid         # from each
    python -m diffusion_lab.report DIR --eval-baseline sampler=ddpm         # samplers vs DDPM at equal steps
    python -m diffusion_lab.report DIR --keep-raw results/study/raw --out results/study   # committable

Reads every job folder under the path (one with ``.hydra/overrides.yaml``; several sweeps below one folder are
read together): its overrides and config, its metrics from whichever logger it used (the CSV logger's
``metrics.csv``, else TensorBoard event files; a W&B-only offline run gets a note), the launcher's
``sweep_status.json`` (status, wall time) and any ``evaluation/*/evaluation.json`` from
``python -m diffusion_lab.evaluate``. Writes ``report.md`` (plots as files in ``report_plots/``) and a
self-contained ``report.html`` (plots and sample grids embedded), both from the same tables:

- one row per job — the overrides that differ between jobs, FID / IS or FD / classifier score, bits/dim,
  validation loss, training speed, wall time, status — sorted by FID (else FD) when there is one, else by
  validation loss, the best value of each
  column marked ★. A job stopped by ``trainer.max_time`` before ``trainer.max_steps`` is "incomplete": listed
  in its own table, not ranked, not in the means;
- with seeds as a sweep axis (``-m seed=1,2,3 ...``): each cell (the jobs' overrides without the seed) as
  mean ± the 95% Student-t interval over its seeds, and with ``--baseline OVERRIDES`` each cell's difference
  from the baseline cell, paired by seed, marked better / worse only where its interval excludes 0 (the
  validation loss only between cells whose loss is the same quantity: not across processes, schedules, ...);
  ``--baseline`` repeated gives each named cell its own difference tables (three cells: every pair);
- with one model per seed evaluated in several settings (sampler, eta, steps, guidance): "Evaluations over
  seeds", each (cell, setting) as mean ± the t-interval over seeds, beside a Fréchet distance scored on several
  sample sets its own spread (the pooled within-checkpoint std) and the seed-to-seed std; with
  ``--eval-baseline 'sampler=ddpm'`` each other setting's difference from that one at the same steps, paired by
  seed, marked better / worse only where its interval excludes 0;
- plots of the Fréchet distance and validation loss over training, the loss by timestep bucket, the score
  against sampling steps (per job, and over seeds as mean ± CI bands per sampler setting), and, over seeds,
  every validation / in-training metric as mean ± CI bands at the steps all jobs logged.

Scores keep the feature network's names: FID / KID / IS on Inception features, FD / KD / classifier score on a
domain classifier's (``features=PATH``), each in its own column, never merged.

``--keep-raw DEST`` copies the small files the report reads (configs, overrides, metrics, evaluations,
status, final sample grids; no checkpoints) to DEST with the report's settings and reports from that copy,
so ``python -m diffusion_lab.report DEST --out ...`` rebuilds the same report later. Several sweeps (seeds
4-6 run after seeds 1-3, say) are reported as one by naming them all: ``python -m diffusion_lab.report A B
--keep-raw results/study/raw`` gathers each one's raw files below DEST (``raw/A``, ``raw/B``) and writes the
report beside DEST; every seed then counts once in its cell, paired by seed across the sweeps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import friendly_errors, refuse
from .reporting import Job, find_jobs, write_report

__all__ = ["Job", "find_jobs", "write_report", "main", "run"]


@friendly_errors
def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_lab.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "sweep",
        nargs="+",
        help="the multirun folder (outputs/<task>/multirun/<time>) or a folder of them; several, with "
        "--keep-raw, are gathered there and reported as one",
    )
    parser.add_argument("--out", default=None, help="where to write the report (default: the sweep folder)")
    parser.add_argument("--title", default=None, help="the report's title")
    parser.add_argument(
        "--baseline",
        action="append",
        default=None,
        metavar="OVERRIDES",
        help="the cell others are compared with, by its overrides (e.g. 'schedule=linear'); repeat it to "
        "compare with several cells, each in its own tables",
    )
    parser.add_argument(
        "--eval-baseline",
        default=None,
        metavar="SETTING",
        help="the evaluation setting others are compared with in each cell, paired by seed, as FIELD=VALUE pairs "
        "of sampler, eta, steps, guidance, n (e.g. 'sampler=ddpm': at the same steps)",
    )
    parser.add_argument(
        "--keep-raw",
        default=None,
        metavar="DEST",
        help="copy the sweep's raw text files to DEST and report from that copy",
    )
    # argparse's own errors as every command's: one line, exit 2
    parser.error = lambda message: refuse(f"{message} (python -m diffusion_lab.report --help)")
    args = parser.parse_args(argv)
    sweeps = args.sweep[0] if len(args.sweep) == 1 else args.sweep
    paths = write_report(sweeps, args.out, args.title, args.baseline, args.keep_raw, args.eval_baseline)
    print("== diffusion_lab.report done ==")
    print(f"report   : {paths['html']}")
    print(f"markdown : {paths['markdown']}")
    for name, path in paths.items():
        if name not in ("markdown", "html"):
            print(f"plot     : {path}  ({name})")
    return paths


def run() -> None:
    """The ``diffusion-lab-report`` console script: ``main`` without its return value (the paths), which a
    console script would take for an exit status."""
    main()


if __name__ == "__main__":
    run()
