"""The suites of benchmarks/run.py: for each, the runs it measures (their command lines, settings, environment).

quality     the "quality per GPU-minute" comparison on Fashion-MNIST: for each seed, experiment=fmnist_fast
            (train, then evaluate) and the peers diffusers / lucidrains through benchmarks/peers_fmnist.py (a
            seed's three runs in a row, in an order rotated by the seed, or with --gpus 3 at once), each cold
            (fresh inductor / Triton cache folders), after one unmeasured warm-up of the machine, with the same
            settings wherever they apply: CUDA graphs (--start compile: torch.compile's, the recorded series;
            --start capture: the eager step captured, no compiler), dropout 0, batch 128, AdamW lr 2e-4 warmed up over 200 steps, EMA 0.999
            with warmup (foreach), grad clip 1.0, the wall budget, DDIM-100 on 10k samples, eager sampling, the
            same feature network.
fused_norm  benchmarks/fused_norm_bench.py and benchmarks/fused_norm_unet.py, the latter compiled in the default
            mode and with CUDA graphs (one JSON line per measured shape or setting).
startup     cold and warm starts of experiment=fmnist_fast: for the whole network compiled (compile_scope=net,
            model.fused_norm=false, checkpoints written in the background, cuDNN autotuning: trainer.benchmark),
            the same with checkpoints written in the foreground, with cuDNN's heuristics (the default), with the
            fused GroupNorm+SiLU op (model.fused_norm=true), with the blocks compiled regionally
            (compile_scope=blocks), and the op everywhere (fused_true) against auto's op in the compiled step only
            (fused_auto), and fused_auto with Triton left on its own ptxas at start (fused_auto_own_ptxas,
            through benchmarks/train_own_ptxas.py), and nothing compiled, the step's network captured as CUDA
            graphs with and without the op (capture, capture_no_op), the same in channels-last memory
            (capture_channels_last), and capture with the op's kernels built one by one on first use
            (capture_first_use, through benchmarks/train_build_on_first_use.py), one run each of three trainings
            in a row: the first in empty inductor / Triton cache folders (cold), then the same command again,
            twice (warm, warm_again). 2,000 steps, a validation, EMA swap,
            checkpoint and sample grid every 500, so a recompilation after the first step shows; each training's
            own summary gives the startup cost (training time beyond its steady-state steps) and its parts.
phases      benchmarks/compile_phases.py: the compile of fmnist_fast's training step alone, cold and warm, in
            its parts (tracing, AOTAutograd, inductor's passes, kernels), and two variants that might shorten it;
            warm_pool (`--only warm_pool`): consecutive warm starts of that step, as they come, with inductor's
            compile workers ready before the step, and with Triton pointed at torch's ptxas from the start
            (its own cold case first), each listing the Triton kernels it had to build.
selftest    one Python command printing a JSON line: the runner's own path, without a GPU.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("diffusers", "lucidrains")
SYSTEMS = ("ours", *PEERS)

# Settings every system of the quality suite runs with (what each side maps them to is in its command line).
SHARED = {
    "dataset": "fashion_mnist 28x28x1 (train split less 1000 held out), on the GPU",
    "batch": 128,
    "optimizer": "AdamW lr 2e-4 (linear warm-up, 200 steps, then constant) betas (0.9, 0.999), no weight decay",
    "grad_clip_norm": 1.0,
    "precision": "bf16 autocast",
    "dropout": 0.0,
    "ema": "0.999 every step, foreach lerp, warmup min(0.999, (1+k)/(10+k)), first update copies",
    "compile": "torch.compile mode=reduce-overhead (CUDA graphs) of the network, cold caches",
    "process": "linear schedule, 1000 steps, eps prediction, L_simple, uniform t",
    "sampling": "DDIM eta 0, 100 steps, 10000 samples in batches of 1000, EMA weights, eager",
    "metrics": "FD / KID / precision / recall on the classifier features vs 10000 train images",
}
SIDE_NOTES = {
    # The wording changed when auto began to keep eager inference on PyTorch's kernels (seeds 0 and 1 of the
    # 2026-12-04 series read "model.fused_norm=auto, its default", which then meant the kernels everywhere too).
    "ours": "Lightning loop of experiment=fmnist_fast (conf/model/unet_small.yaml, GroupNorm+SiLU as fused Triton "
    "kernels on CUDA in training, eager validation and sampling: model.fused_norm=true, as auto ran until "
    "2026-12-05); its budget is the Trainer's max_time, which also covers validation (2 batches every 2000 steps) "
    "and checkpoints every 2000 steps",
    "diffusers": "plain PyTorch loop: diffusers.UNet2DModel (64, 128, 128), attention at 14x14; budget: wall "
    "time of the training loop from the first step (compilation included)",
    "lucidrains": "plain PyTorch loop: denoising_diffusion_pytorch.Unet(dim=64, dim_mults=(1, 2, 2)); budget: "
    "wall time of the training loop from the first step (compilation included)",
}
# --start: how every system runs its training step. compile is the recorded series' (SHARED, SIDE_NOTES as they
# are, so its rows keep their settings' digest); capture a series of its own, its rows marked "start": "capture".
START_MODES = ("compile", "capture")
CAPTURE_SETTINGS = {
    "start": "capture",
    "compile": "none: the network's training forward and backward captured as CUDA graphs from the eager kernels "
    "(torch.cuda.make_graphed_callables through diffusion_lab's capture.CapturedNet: compile=capture for ours, "
    "--compile-mode capture for the peers), cold caches",
}
CAPTURE_OURS = (
    "Lightning loop of experiment=fmnist_fast (conf/model/unet_small.yaml, GroupNorm+SiLU as fused Triton kernels "
    "on CUDA in the training step, PyTorch's kernels in validation and sampling: model.fused_norm=auto); its "
    "budget is the Trainer's max_time, which also covers validation (2 batches every 2000 steps) and checkpoints "
    "every 2000 steps"
)


def start_settings(opts: argparse.Namespace, system: str) -> dict:
    """A run's settings: SHARED, the budget and the side's note, as ``--start`` has them."""
    settings = {**SHARED, "seconds": opts.seconds, "side": SIDE_NOTES[system]}
    if opts.start == "capture":
        settings.update(CAPTURE_SETTINGS)
        if system == "ours":
            settings["side"] = CAPTURE_OURS
    return settings


# Ours' note as a series with --ours-override ran it: the note above describes the pinned command, which these
# overrides, last in it, supersede where they name the same setting.
OVERRIDDEN = "; then, last in its command and superseding the above where they name the same setting: {}"


@dataclass
class Run:
    """One measured run: its commands run in order, in the environment ``env`` (added to the runner's)."""

    system: str
    seed: int | None
    settings: dict
    commands: list[list[str]]
    parse: str  # "peer" | "ours" | "startup" | "json_lines": how its result is read from the commands' stdout
    env: dict[str, str] = field(default_factory=dict)
    fresh_dirs: list[Path] = field(default_factory=list)  # emptied and created before the run
    timeout_s: float = 3600.0  # per command

    @property
    def label(self) -> str:
        return self.system if self.seed is None else f"{self.system}_s{self.seed}"


def cold_caches(cache: Path) -> tuple[dict[str, str], list[Path]]:
    """The environment that points inductor and Triton at empty folders under ``cache``, and those folders."""
    inductor, triton = cache / "inductor", cache / "triton"
    return {"TORCHINDUCTOR_CACHE_DIR": str(inductor), "TRITON_CACHE_DIR": str(triton)}, [inductor, triton]


def max_time(seconds: float) -> str:
    """A wall budget in seconds as the Trainer's max_time, DD:HH:MM:SS (whole seconds)."""
    s = round(seconds)
    return f"{s // 86400:02d}:{s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def features_path(opts: argparse.Namespace) -> Path:
    return Path(opts.features) if opts.features else Path(opts.out) / "fmnist_clf.pt"


# Unmeasured, before the quality and startup suites' runs: loads torch, its compiler and the GPU once, so the first
# measured run on a fresh machine does not alone pay for a cold page cache and driver start. Compile caches stay
# empty.
WARM_UP = (
    "import torch, torch._inductor.compile_fx; "
    "torch.cuda.is_available() and torch.ones(8, device='cuda').sum().item(); print('warm-up done')"
)


def prepare_commands(suite: str, opts: argparse.Namespace) -> list[list[str]]:
    """Commands run once before a suite's measured runs (not measured): for the quality suite, its feature
    network when its file is missing, then the machine's warm-up; for the startup suite the warm-up."""
    if suite not in ("quality", "startup"):
        return []
    warm_up = [sys.executable, "-c", WARM_UP]
    if suite == "startup" or features_path(opts).exists():
        return [warm_up]
    data = [f"data.root={opts.data_root}"] if opts.data_root else []
    out = f"out={features_path(opts)}"
    return [[sys.executable, "-m", "diffusion_lab.features", *data, "epochs=5", out], warm_up]


def ours_run(opts: argparse.Namespace, seed: int) -> Run:
    capture = opts.start == "capture"
    run_dir = Path(opts.work) / f"ours_s{seed}"
    env, fresh = cold_caches(run_dir / "cache")
    data = [f"data.root={opts.data_root}"] if opts.data_root else []
    train = [
        *(sys.executable, "-m", "diffusion_lab.train", "experiment=fmnist_fast", f"seed={seed}"),
        *(
            "model.dropout=0.0",
            # auto has since kept eager inference on PyTorch's kernels; the series that began 2026-12-04 ran the
            # Triton kernels there too, so its later seeds pin that. A capture series takes auto.
            f"model.fused_norm={'auto' if capture else 'true'}",
            f"compile={'capture' if capture else 'reduce-overhead'}",
            "data.batch_size=128",
            "optimizer.lr=2e-4",
            "lr_scheduler.warmup_steps=200",
        ),
        *("callbacks.ema.decay=0.999", "callbacks.ema.warmup=true", "trainer.gradient_clip_val=1.0"),
        f"trainer.max_time={max_time(opts.seconds)}",
        f"compile_cache={env['TORCHINDUCTOR_CACHE_DIR']}",
        *data,
        *opts.ours_overrides,
        f"hydra.run.dir={run_dir / 'train'}",
    ]
    evaluate = [
        *(
            sys.executable,
            "-m",
            "diffusion_lab.evaluate",
            f"ckpt={run_dir / 'train' / 'checkpoints' / 'last.ckpt'}",
        ),
        *(
            f"features={features_path(opts)}",
            "metrics=[fid,kid,pr]",
            "sampler=ddim",
            "eta=0.0",
            "steps=[100]",
        ),
        *("n=10000", "batch_size=1000", "n_real=10000", f"seed={seed}", "compile=false", "progress=false"),
        f"compile_cache={env['TORCHINDUCTOR_CACHE_DIR']}",
        f"cache_dir={Path(opts.work) / 'metrics_cache'}",
        *([f"data_root={opts.data_root}"] if opts.data_root else []),
        f"out_dir={run_dir / 'eval'}",
    ]
    settings = start_settings(opts, "ours")
    if opts.ours_overrides:  # only then: the rows of the series without them keep their settings' digest
        settings["ours_overrides"] = list(opts.ours_overrides)
        settings["side"] += OVERRIDDEN.format(" ".join(opts.ours_overrides))
    timeout = opts.seconds + 600  # compilation, final samples, sampling and scoring
    return Run("ours", seed, settings, [train, evaluate], "ours", env, fresh, timeout)


def peer_run(opts: argparse.Namespace, peer: str, seed: int) -> Run:
    run_dir = Path(opts.work) / f"{peer}_s{seed}"
    env, fresh = cold_caches(run_dir / "cache")
    command = [
        *(sys.executable, str(ROOT / "benchmarks" / "peers_fmnist.py"), "--peer", peer, "--seed", str(seed)),
        *(
            "--seconds",
            f"{opts.seconds:g}",
            "--batch",
            "128",
            "--lr",
            "2e-4",
            "--lr-warmup-steps",
            "200",
            "--weight-decay",
            "0",
        ),
        *("--clip-grad", "1.0", "--ema", "0.999", "--ema-warmup", "--dropout", "0.0"),
        *("--compile-mode", "capture" if opts.start == "capture" else "reduce-overhead"),
        *("--sample-compile-mode", "none"),
        *("--n", "10000", "--sample-steps", "100", "--sample-batch", "1000", "--n-real", "10000"),
        *("--features", str(features_path(opts)), "--cache-dir", str(Path(opts.work) / "metrics_cache")),
        *(["--data-root", opts.data_root] if opts.data_root else []),
        *("--out", str(run_dir)),
    ]
    settings = start_settings(opts, peer)
    return Run(peer, seed, settings, [command], "peer", env, fresh, opts.seconds + 600)


def seed_order(seed: int) -> tuple[str, ...]:
    """The systems in the order a seed runs them: rotated by the seed, so over three seeds each system runs
    once first, once second and once last (a drift within a call, or a fresh machine's first run, falls on
    every system alike)."""
    k = -seed % len(SYSTEMS)
    return SYSTEMS[k:] + SYSTEMS[:k]


def quality(opts: argparse.Namespace) -> list[Run]:
    runs = []
    for seed in opts.seeds:  # seed-major: a drift of the machine over the suite spreads over every system
        runs.extend(
            ours_run(opts, seed) if s == "ours" else peer_run(opts, s, seed) for s in seed_order(seed)
        )
    return runs


def script_run(opts: argparse.Namespace, script: str, args: list[str], label: str | None = None) -> Run:
    env, fresh = cold_caches(Path(opts.work) / (label or script) / "cache")
    command = [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args]
    return Run(label or script, None, {"args": args}, [command], "json_lines", env, fresh, 1800.0)


def fused_norm(opts: argparse.Namespace) -> list[Run]:
    graphs = script_run(
        opts, "fused_norm_unet", ["--mode", "reduce-overhead"], label="fused_norm_unet_cudagraphs"
    )
    return [script_run(opts, "fused_norm_bench", []), script_run(opts, "fused_norm_unet", []), graphs]


# name: (compile_scope, extra overrides). The fused norm, the checkpoint writes and cuDNN's algorithm choice are
# pinned in each, so every label means what it meant in the records (unet_small's default, auto, turns the op on
# on CUDA; trainer=gpu now takes cuDNN's heuristics): "net" against "net_foreground_writes" is the effect of
# writing checkpoints in the background, against "net_cudnn_heuristics" cuDNN's autotuning of every convolution in
# the first step (trainer.benchmark), against "net_fused_norm" the op's, against "blocks" the compile scope's.
# The compile mode too: fmnist_fast's own default moved from reduce-overhead to capture (2026-12-07).
def _pinned(
    fused_norm: str, writes: str, cudnn_autotune: str = "true", mode: str = "reduce-overhead"
) -> list:
    return [
        f"compile={mode}",
        f"model.fused_norm={fused_norm}",
        f"checkpoint_writes={writes}",
        f"trainer.benchmark={cudnn_autotune}",
    ]


STARTUP_SETTINGS = {
    "net": ("net", _pinned("false", "background")),
    "net_foreground_writes": ("net", _pinned("false", "foreground")),
    "net_cudnn_heuristics": ("net", _pinned("false", "background", cudnn_autotune="false")),
    "net_fused_norm": ("net", _pinned("true", "background")),
    # The op everywhere against auto's op in the compiled step only (eager validation and grids on PyTorch's
    # kernels), both with cuDNN's heuristics: the first validation's cost of Triton building kernels on first use.
    "fused_true": ("net", _pinned("true", "background", cudnn_autotune="false")),
    "fused_auto": ("net", _pinned("auto", "background", cudnn_autotune="false")),
    "blocks": ("blocks", _pinned("false", "background")),
    # Nothing compiled: the training step's network captured as CUDA graphs (compile=capture), with auto's op in
    # the captured step and with PyTorch's GroupNorm and SiLU, cuDNN's heuristics as fused_auto.
    "capture": ("net", _pinned("auto", "background", cudnn_autotune="false", mode="capture")),
    "capture_no_op": ("net", _pinned("false", "background", cudnn_autotune="false", mode="capture")),
    # capture with the network and its inputs in channels-last memory (channels_last=true), against capture's NCHW:
    # cuDNN's bf16 convolutions in NHWC, and the op's loads along a channels-last row.
    "capture_channels_last": (
        "net",
        [*_pinned("auto", "background", cudnn_autotune="false", mode="capture"), "channels_last=true"],
    ),
}
# Settings trained through a benchmark-only entry script, each otherwise the setting it names:
# train_own_ptxas.py (Triton on its own ptxas until inductor first builds in-process, as before
# compile_policy.use_torch_ptxas) and train_build_on_first_use.py (compile=capture with the fused norm op's kernels
# built one by one on first use, as before nets.fused_norm.build_kernels_at_once).
OWN_PTXAS = {"fused_auto_own_ptxas": "fused_auto"}
FIRST_USE = {"capture_first_use": "capture"}
ENTRY_SCRIPTS = {
    **dict.fromkeys(OWN_PTXAS, "train_own_ptxas.py"),
    **dict.fromkeys(FIRST_USE, "train_build_on_first_use.py"),
}


# A startup run's trainings in a row on one cache folder: the second warm start is there because on an H100
# (2026-12-06) the first two warm starts of the step rebuilt some of the fused norm op's Triton kernels and the
# third did not (BENCHMARKS.md, "Cold and warm starts").
STARTS = ("cold", "warm", "warm_again")


def startup_run(opts: argparse.Namespace, name: str) -> Run:
    """Trainings of experiment=fmnist_fast in a row (``STARTS``) on one cache folder, emptied before the first."""
    scope, extra = STARTUP_SETTINGS[{**OWN_PTXAS, **FIRST_USE}.get(name, name)]
    env, fresh = cold_caches(Path(opts.work) / name / "cache")
    data = [f"data.root={opts.data_root}"] if opts.data_root else []
    script = ENTRY_SCRIPTS.get(name)
    entry = [str(ROOT / "benchmarks" / script)] if script else ["-m", "diffusion_lab.train"]
    common = [
        *(sys.executable, *entry, "experiment=fmnist_fast", "trainer.max_time=null"),
        *(
            "trainer.max_steps=2000",
            "trainer.val_check_interval=500",
            "callbacks.checkpoint.every_n_train_steps=500",
        ),
        *(f"compile_scope={scope}", f"compile_cache={env['TORCHINDUCTOR_CACHE_DIR']}", *extra, *data),
    ]
    commands = [[*common, f"hydra.run.dir={Path(opts.work) / name / start}"] for start in STARTS]
    settings = {"compile_scope": scope, "overrides": extra, "steps": 2000, "validate_every": 500}
    settings["ptxas_at_start"] = "triton's own" if name in OWN_PTXAS else "torch's"
    if "compile=capture" in extra and "model.fused_norm=false" not in extra:
        settings["op_kernels"] = (
            "built on first use" if name in FIRST_USE else "built at once before the capture"
        )
    return Run(name, None, settings, commands, "startup", env, fresh, 600.0)


def startup(opts: argparse.Namespace) -> list[Run]:
    return [startup_run(opts, name) for name in (*STARTUP_SETTINGS, *OWN_PTXAS, *FIRST_USE)]


def precompile(opts: argparse.Namespace) -> list[Run]:
    return [script_run(opts, "precompile_probe", [])]


def phases(opts: argparse.Namespace) -> list[Run]:
    variants = ["--only", "net,no_pattern_matcher,nested_regions"]
    warm_pool = script_run(opts, "compile_phases", ["--only", "pool_ready,ptxas_env"], label="warm_pool")
    return [script_run(opts, "compile_phases", variants), warm_pool]


def selftest(opts: argparse.Namespace) -> list[Run]:
    code = "import json, os; print(json.dumps({'value': 1, 'cache': os.environ['TORCHINDUCTOR_CACHE_DIR']}))"
    env, fresh = cold_caches(Path(opts.work) / "selftest" / "cache")
    return [
        Run("selftest", None, {"value": 1}, [[sys.executable, "-c", code]], "json_lines", env, fresh, 60.0)
    ]


SUITES = {
    "quality": quality,
    "fused_norm": fused_norm,
    "startup": startup,
    "precompile": precompile,
    "phases": phases,
    "selftest": selftest,
}


def command_line(run: Run, command: list[str]) -> str:
    """The command as a shell line, with the run's environment in front."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in run.env.items())
    return f"{env} {shlex.join(command)}" if env else shlex.join(command)
