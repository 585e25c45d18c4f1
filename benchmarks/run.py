"""One runner for the benchmarks: ``python benchmarks/run.py SUITE [--out DIR] [--dry-run] [options]``.

It runs a suite's measured runs (benchmarks/run_suites.py lists them) one after another, or ``--gpus N`` at a
time each on its own GPU, each in its own empty inductor / Triton cache folders, and writes

    <out>/<suite>.jsonl      one JSON object per measured result: suite, system, seed, settings, the commands
                             with their exit codes and seconds, the script's own JSON result, and (quality)
                             the compared metrics
    <out>/manifest.json      the settings of every system, and per invocation: date (UTC), git commit and
                             whether the tree is dirty, the code's digest (``run_manifest.py --commit REV``
                             prints a commit's), host, CPU count, GPU names and driver, package versions, the
                             options, and every command line it ran with its exit code and seconds
    <out>/logs/              each command's stdout and stderr
    <work>/                  each run's folder (checkpoints, samples) and cache folders (``--work``, default
                             <out>/runs: give a scratch folder to keep <out> small)

After the quality suite it prints and writes (<out>/quality_summary.json) the per-system mean ± 95% Student-t
half-width over seeds, and for each peer whether ours has the lower mean FD with non-overlapping intervals.

A call on an ``--out`` that already holds results runs only the runs without one (``--limit K``: at most K of
them), so a suite can be split over several calls or continued after an interruption; the summary covers every
result in the file.

The fair quality comparison on a GPU machine (8 GPUs), from the repository root, in calls of under 10 minutes
(a run is about 5: 240 s of training, then 10k DDIM-100 samples scored; each call continues the last):
    source benchmarks/gpu_env.sh; Q="--data-root .data/fashion-mnist --out outputs/quality_fair --work /tmp/dl/q"
    python3 benchmarks/run.py quality $Q --limit 0             # the feature network, trained once into --out
    python3 benchmarks/run.py quality $Q --gpus 6 --limit 6    # seeds 0 and 1: six runs at once, one per GPU
    python3 benchmarks/run.py quality $Q --gpus 3              # seed 2, then the summary of all nine
Every wave holds whole seeds (each seed's three systems at once), so the systems share the host alike.
``--features PATH`` reuses a classifier from ``python -m diffusion_lab.features``. ``--dry-run`` prints the
command lines and runs nothing. ``--ours-override KEY=VALUE`` (repeatable) starts another series of the quality
suite (say, ours without its in-budget validation: ``trainer.limit_val_batches=0``): ours' training command ends
with them, its rows disclose them, and an ``--out`` holding ours' rows of another series is refused.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout, installed or not

from run_manifest import manifest  # noqa: E402
from run_suites import ROOT, START_MODES, STARTS, SUITES, Run, command_line, prepare_commands  # noqa: E402
from run_summary import summary, text  # noqa: E402

BATCH = 128  # the quality suite's batch, for ours' img/s over the budget


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suite", help=f"one of {', '.join(SUITES)}")
    p.add_argument(
        "--out", default=None, help="output folder (default outputs/benchmarks/<suite>-<UTC time>)"
    )
    p.add_argument(
        "--work", default=None, help="the runs' folders: checkpoints, samples, caches (default <out>/runs)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the command lines, run nothing")
    p.add_argument(
        "--gpus", type=int, default=1, help="runs at once, each on its own GPU (CUDA_VISIBLE_DEVICES)"
    )
    p.add_argument("--limit", type=int, default=None, help="run at most this many of the pending runs")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated run labels: the suite's runs of these labels alone, in this order",
    )
    p.add_argument("--seconds", type=float, default=240.0, help="quality: training wall budget per run")
    p.add_argument("--seeds", default="0,1,2", help="quality: comma-separated seeds")
    p.add_argument("--features", default=None, help="quality: classifier file (default: trained into --out)")
    p.add_argument(
        "--data-root", default=None, help="quality: Fashion-MNIST folder (default: the data config's)"
    )
    p.add_argument(
        "--start",
        choices=START_MODES,
        default="compile",
        help="quality: how every system runs its training step: compile (torch.compile with CUDA graphs, the "
        "recorded series) or capture (no compiler: the eager step captured as CUDA graphs; a new series)",
    )
    p.add_argument(
        "--ours-override",
        dest="ours_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="quality, repeatable: a Hydra override added last to ours' training command, e.g."
        " trainer.limit_val_batches=0 (a new series: its rows disclose them, and an --out of another series is"
        " refused)",
    )
    opts = p.parse_args(argv)
    try:
        opts.seeds = [int(s) for s in opts.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds={opts.seeds!r}: give comma-separated integers, e.g. 0,1,2")
    if opts.gpus < 1:
        p.error("--gpus must be >= 1")
    opts.only = opts.only.split(",") if opts.only else None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    opts.out = str(Path(opts.out or ROOT / "outputs" / "benchmarks" / f"{opts.suite}-{stamp}").resolve())
    opts.work = str(Path(opts.work or Path(opts.out) / "runs").resolve())
    return opts


# ---------------------------------------------------------------------------------------------- results
def json_lines(stdout: str) -> list[dict]:
    rows = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def train_summary(stdout: str) -> dict:
    """The numbers of diffusion_lab.train's closing summary ("steps trained : N", ...)."""
    patterns = {
        "steps": r"steps trained\s*:\s*(\d+)",
        "train_img_per_s_steady": r"train speed\s*:\s*([\d.]+) img/s",
        "wall_time_s": r"wall time\s*:\s*([\d.]+) s",
        "startup_s": r"startup cost\s*:\s*([\d.]+) s",
        "first_step_s": r"startup cost\s*:.*first step ([\d.]+) s",
        "compile_s": r"startup cost\s*:.*compiling ([\d.]+) s",
        "graphs": r"startup cost\s*:.*compiling [\d.]+ s, (\d+) graphs",
        "kernels_s": r"startup cost\s*:.*compiling [\d.]+ s, \d+ graphs, of which ([\d.]+) s generating",
        "passes_s": r"startup cost\s*:.*compiling [^;]*?([\d.]+) s in inductor's passes",
        "autograd_s": r"startup cost\s*:.*compiling [^;]*?([\d.]+) s in AOTAutograd",
        "trace_s": r"startup cost\s*:.*compiling [^;]*?([\d.]+) s tracing",
        "aot_cache_hit": r"compile cache\s*:\s*AOTAutograd (\d+) hit",
        "aot_cache_miss": r"compile cache\s*:\s*AOTAutograd \d+ hit, (\d+) missed",
        "aot_cache_bypass": r"compile cache\s*:\s*AOTAutograd \d+ hit, \d+ missed, (\d+) bypassed",
        "fx_cache_hit": r"compile cache\s*:.*inductor graphs (\d+) hit",
        "fx_cache_miss": r"compile cache\s*:.*inductor graphs \d+ hit, (\d+) missed",
        "fx_cache_bypass": r"compile cache\s*:.*inductor graphs \d+ hit, \d+ missed, (\d+) bypassed",
        "checkpoint_write_s": r"startup cost\s*:.*checkpoint writes ([\d.]+) s",
        "checkpoint_background_s": r"startup cost\s*:.*checkpoint writes [\d.]+ s, ([\d.]+) s more in the background",
        "validations": r"validation\s*:\s*(\d+) runs?,",
        "validation_s": r"validation\s*:\s*\d+ runs?, ([\d.]+) s",
        "validation_first_s": r"validation\s*:.*\(the first ([\d.]+) s",
    }
    found = {key: re.search(pattern, stdout) for key, pattern in patterns.items()}
    return {key: float(m.group(1)) for key, m in found.items() if m}


def results(run: Run, stdouts: list[str], budget: float) -> list[tuple[dict, dict]]:
    """(the script's result, the compared metrics) for each result the run printed."""
    if run.parse == "json_lines":
        return [(row, {}) for out in stdouts for row in json_lines(out)]
    if run.parse == "startup":  # a cold training, then the same again warm (twice)
        rows = [{"start": start, **train_summary(out)} for start, out in zip(STARTS, stdouts)]
        return [(r, {k: r[k] for k in ("startup_s", "compile_s", "first_step_s") if k in r}) for r in rows]
    if run.parse == "peer":
        rows = json_lines(stdouts[-1])
        if not rows:
            return []
        r = rows[-1]
        metrics = {
            "fd": r["fd"],
            "kid": r["kid_mean"],
            "steps": r["steps_trained"],
            "img_per_s": r["img_per_s"],
        }
        return [(r, metrics)]
    train, rows = train_summary(stdouts[0]), json_lines(stdouts[1]) if len(stdouts) > 1 else []
    if not rows or "steps" not in train:
        return []
    row = rows[-1]
    metrics = {
        "fd": row.get("fd_classifier", row.get("fid")),
        "kid": row.get("kd_classifier_mean", row.get("kid_mean")),
        "steps": train["steps"],
        "img_per_s": train["steps"] * BATCH / budget,  # over the budget, compilation included, as the peers'
    }
    return [({"train": train, "evaluate": row}, metrics)]


# ---------------------------------------------------------------------------------------------- running
def execute(run: Run, logs: Path) -> tuple[list[dict], list[str]]:
    """Run ``run``'s commands in order (stopping at a failure) in fresh cache folders: (what each command was,
    its exit code and seconds; each command's stdout)."""
    for folder in run.fresh_dirs:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    env = {**os.environ, **run.env}
    entries, stdouts = [], []
    for i, command in enumerate(run.commands):
        out, err = logs / f"{run.label}.{i}.out", logs / f"{run.label}.{i}.err"
        started = time.perf_counter()
        try:
            with out.open("w") as f_out, err.open("w") as f_err:
                code = subprocess.run(
                    command, stdout=f_out, stderr=f_err, env=env, cwd=ROOT, timeout=run.timeout_s
                ).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        seconds = round(time.perf_counter() - started, 1)
        entries.append(
            {"run": run.label, "command": command_line(run, command), "returncode": code, "seconds": seconds}
        )
        stdouts.append(out.read_text())
        if code != 0:
            print(f"[run] {run.label}: command {i} failed ({code}); see {err}", file=sys.stderr, flush=True)
            break
    return entries, stdouts


def pending(opts: argparse.Namespace, done: set[str]) -> list[Run]:
    """The suite's runs not yet in ``done``, with ``--gpus`` > 1 each on the GPU of its slot in its wave."""
    runs = [r for r in SUITES[opts.suite](opts) if r.label not in done and selected(opts, r.label)]
    if opts.only:  # in the order named, so that a pair can run in either order
        runs.sort(key=lambda r: opts.only.index(r.label))
    if opts.gpus > 1:
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // opts.gpus))
        for i, run in enumerate(runs):  # each run its GPU and its share of the host's cores
            run.env.update(CUDA_VISIBLE_DEVICES=str(i % opts.gpus), OMP_NUM_THREADS=threads)
    return runs


def selected(opts: argparse.Namespace, label: str) -> bool:
    return opts.only is None or label in opts.only


def unknown_labels(opts: argparse.Namespace) -> str | None:
    """The one-line error for labels of ``--only`` that the suite has no run of, or None."""
    labels = [r.label for r in SUITES[opts.suite](opts)]
    unknown = [x for x in opts.only or [] if x not in labels]
    if not unknown:
        return None
    return f"run.py: --only {','.join(unknown)}: no such run in suite {opts.suite}; its runs: {', '.join(labels)}"


# Set by the runner for each run: an override of these would break the series' seeds, budget or cold caches.
RUNNER_KEYS = ("seed", "trainer.max_time", "compile_cache", "data.root", "hydra.run.dir")


def bad_overrides(opts: argparse.Namespace) -> str | None:
    """The one-line error for ``--ours-override`` outside the quality suite, one not KEY=VALUE, or one of a key
    the runner sets; or None."""
    if opts.ours_overrides and opts.suite != "quality":
        return f"run.py: --ours-override applies to the quality suite, not {opts.suite}"
    if opts.start != "compile" and opts.suite != "quality":
        return f"run.py: --start applies to the quality suite, not {opts.suite}"
    for item in opts.ours_overrides:
        if "=" not in item:
            return f"run.py: --ours-override {item!r} is not KEY=VALUE (a Hydra override of ours' training)"
        key = item.split("=", 1)[0].lstrip("+~")  # +key=, ++key= and ~key= name the same key
        if key in RUNNER_KEYS:
            return f"run.py: --ours-override {key}: it is set by the runner for each run; keys it sets: {', '.join(RUNNER_KEYS)}"
    return None


def other_series(opts: argparse.Namespace) -> str | None:
    """The one-line error where ``<out>/quality.jsonl`` holds rows run with another ``--start`` or of ours run with
    other ``--ours-override`` (a series compares one setting of each system over its seeds), or None."""
    if opts.suite != "quality":
        return None
    jsonl = Path(opts.out) / "quality.jsonl"
    rows = read_jsonl(jsonl)
    starts = {(r.get("settings") or {}).get("start", "compile") for r in rows}
    if starts and starts != {opts.start}:
        held = " / ".join(sorted(starts))
        return f"run.py: --start {opts.start}: {jsonl} holds runs of --start {held}; a series keeps one setting: give a new --out"
    ran = {tuple((r.get("settings") or {}).get("ours_overrides", [])) for r in rows if r["system"] == "ours"}
    if not ran or ran == {tuple(opts.ours_overrides)}:
        return None
    listed = " / ".join(shlex.join(o) or "none" for o in sorted(ran))
    return (
        f"run.py: --ours-override {shlex.join(opts.ours_overrides) or 'none'}: {jsonl} holds ours run with "
        f"{listed}; a series keeps one setting: give a new --out"
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def prepare(opts: argparse.Namespace, invocation: dict, save) -> bool:
    for command in prepare_commands(opts.suite, opts):
        started = time.perf_counter()
        code = subprocess.run(command, cwd=ROOT).returncode
        invocation["prepare"].append({"command": shlex.join(command), "returncode": code,
                                      "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
        save()
        if code != 0:
            print(f"run.py: preparing failed ({code}): {shlex.join(command)}", file=sys.stderr)
            return False
    return True


def measured_rows(
    opts: argparse.Namespace, run: Run, entries: list[dict], stdouts: list[str], recorded: dict
) -> list[dict]:
    base = {"suite": opts.suite, "label": run.label, "system": run.system, "seed": run.seed}
    base["settings"] = run.settings
    base.update(recorded)  # the code and the GPU of the call
    found = results(run, stdouts, opts.seconds) if entries[-1]["returncode"] == 0 else []
    rows = [{**base, "result": r, "metrics": m, "commands": entries} for r, m in found]
    return rows or [{**base, "result": None, "metrics": {}, "commands": entries, "error": "no result"}]


def gpu_type(invocation: dict) -> str:
    """The GPU type a call ran on, as torch names it ("no GPU" on a CPU machine; types joined where they differ)."""
    return ", ".join(sorted(set(invocation["gpu"]["torch_devices"]))) or "no GPU"


def other_gpus_warning(rows: list[dict], gpu: str, out: Path) -> str | None:
    """A warning when ``out`` holds rows measured on another GPU type than this call's: their seeds do not pair
    with this call's (rows from calls that did not name their GPU are not compared)."""
    others = sorted({r["gpu"] for r in rows if r.get("gpu") and r["gpu"] != gpu})
    if not others:
        return None
    return (
        f"[run] WARNING: {out} holds rows measured on {', '.join(others)}, this call runs on {gpu}: "
        "runs of different GPU types do not compare (the summary lists the runs by GPU)"
    )


def run_suite(opts: argparse.Namespace) -> int:
    """Run the suite's runs that ``<out>/<suite>.jsonl`` has no result of yet (a later call continues an
    interrupted or split suite), ``--gpus`` at a time, appending their rows; then the summary over all rows."""
    out, jsonl = Path(opts.out), Path(opts.out) / f"{opts.suite}.jsonl"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    earlier = read_jsonl(jsonl)
    done = {r["label"] for r in earlier if r.get("result") is not None}
    runs = pending(opts, done)[: opts.limit]
    path = out / "manifest.json"
    record = json.loads(path.read_text()) if path.exists() else {"suite": opts.suite, "invocations": []}
    record["systems"] = {r.system: r.settings for r in SUITES[opts.suite](opts)}
    invocation = manifest(opts.suite, vars(opts))
    record["invocations"].append(invocation)
    # Each row names the code and the GPU type of the call that measured it.
    code = {key: invocation[key] for key in ("package_sha256", "scripts_sha256")}
    recorded = {"code": code, "gpu": gpu_type(invocation)}
    warning = other_gpus_warning(earlier, recorded["gpu"], out)
    if warning:
        print(warning, file=sys.stderr, flush=True)

    def save() -> None:
        path.write_text(json.dumps(record, indent=2) + "\n")

    if not prepare(opts, invocation, save):  # also with --limit 0: prepare only
        return 1
    for start in range(0, len(runs), opts.gpus):
        wave = runs[start : start + opts.gpus]
        print(f"[run] {', '.join(r.label for r in wave)} ...", file=sys.stderr, flush=True)
        with ThreadPoolExecutor(len(wave)) as pool:
            finished = list(pool.map(lambda r: (r, *execute(r, out / "logs")), wave))
        for run, entries, stdouts in finished:
            invocation["runs"].extend(entries)
            with jsonl.open("a") as f:
                rows = measured_rows(opts, run, entries, stdouts, recorded)
                f.writelines(json.dumps(row) + "\n" for row in rows)
        save()
    if opts.suite == "quality":
        record["summary"] = summary([r for r in read_jsonl(jsonl) if r.get("result") is not None])
        (out / "quality_summary.json").write_text(json.dumps(record["summary"], indent=2) + "\n")
        print(text(record["summary"]), flush=True)
    save()
    print(f"[run] wrote {jsonl} and {path}", file=sys.stderr)
    return 0


def dry_run(opts: argparse.Namespace) -> int:
    for command in prepare_commands(opts.suite, opts):
        print(f"prepare: {shlex.join(command)}")
    for run in pending(opts, set())[: opts.limit]:
        for command in run.commands:
            print(f"{run.label}: {command_line(run, command)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts.suite not in SUITES:
        print(f"run.py: unknown suite {opts.suite!r}; choose one of {', '.join(SUITES)}", file=sys.stderr)
        return 2
    if error := unknown_labels(opts) or bad_overrides(opts) or other_series(opts):
        print(error, file=sys.stderr)
        return 2
    return dry_run(opts) if opts.dry_run else run_suite(opts)


if __name__ == "__main__":
    sys.exit(main())
