"""The ``compile`` and ``channels_last`` settings as torch.compile arguments (train, evaluate and bench share them)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from .errors import UserError, require_writable

__all__ = [
    "CAPTURE",
    "COMPILE_SCOPES",
    "compile_mode",
    "compile_options",
    "compile_network",
    "compile_stats",
    "eval_stance",
    "use_compile_cache",
    "use_torch_ptxas",
]

COMPILE_SCOPES = ("net", "blocks")
# compile=capture: no torch.compile; the training step's network captured as CUDA graphs (capture.CapturedNet).
CAPTURE = "capture"


def compile_mode(value: bool | str | None) -> str | None:
    """The ``compile`` setting (train and evaluate configs) as a torch.compile mode name: None when off (false,
    none, null), "default" for true, else the mode itself ("reduce-overhead" = CUDA graphs, "max-autotune", ...,
    or ``CAPTURE``, which training takes instead of a torch.compile mode).
    """
    if value in (False, None, "false", "none"):
        return None
    return "default" if value in (True, "true") else str(value)


def compile_options(mode: str, channels_last: bool = False) -> dict[str, Any]:
    """Inductor's options for the torch.compile ``mode`` ("default", "reduce-overhead", ...), and with
    ``channels_last`` its layout optimization forced on: ``torch.compile(net, options=compile_options(...))``.

    Inductor decides by itself whether a compiled graph runs its convolutions NHWC, and its heuristic says no for
    any training graph with a 3x3 convolution that at least halves the channels -- every UNet decoder (and a
    3-channel output convolution). The step then runs NCHW whatever the tensors' layout, and on a GPU cuDNN
    transposes to NHWC and back around every convolution (a large share of a UNet training step, see
    BENCHMARKS.md). Forcing it is the only switch for that, so channels_last=true turns it on.
    """
    from torch._inductor import list_mode_options

    allowed = list(list_mode_options())
    if mode not in allowed:
        raise UserError(
            f"compile={mode} is not a torch.compile mode; choose from {['false', 'true', *allowed]}"
        )
    options = dict(list_mode_options(mode))
    if channels_last:
        options["force_layout_optimization"] = True
    return options


def eval_stance(compiled: bool, compile_eval: bool) -> contextlib.AbstractContextManager:
    """The context validation and sampling during training run in: eager unless ``compile_eval``.

    The compiled training step is one graph. Validation (no grad, eval mode), sample grids, in-training FD and
    the final samples (other batch sizes, no grad) would each be a new compilation of the network started after
    training has begun -- on a GPU tens of seconds each, with CUDA graphs one more per batch shape -- for work
    that runs a few times per run. ``torch.compiler.set_stance("force_eager")`` runs them through the plain
    module instead, and compiles nothing.
    """
    if not compiled or compile_eval:
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")


def use_compile_cache(folder: str | None) -> None:
    """Keep inductor's compiled kernels, FX graphs and AOTAutograd graphs, and Triton's kernels, in ``folder``
    (``compile_cache``), so every job of a sweep and every later run on the same torch and network reuses them: a
    warm start compiles nothing. Without it inductor uses /tmp/torchinductor_<user>, lost with the machine (a
    fresh cluster node).

    A folder on a shared filesystem already carries the caches between machines, so torch's "mega-cache"
    (save_cache_artifacts / load_cache_artifacts, for moving caches without one) is not used. Nor is Dynamo's
    experimental ``caching_precompile``, which would also skip tracing on a warm start: it keys its saved graphs
    by the compiled function's source, and ``Module.compile`` compiles ``Module._call_impl`` for every network, so
    two networks in one cache folder collide (torch 2.14, CPU: loading one network's package for another fails in
    Dynamo's guard code), and on torch 2.11 with CUDA a warm start with it took 9.7 s against 3.4 s without
    (BENCHMARKS.md, "Cold and warm starts"). A folder set by the
    user's own TORCHINDUCTOR_CACHE_DIR wins; torch writes its default into that variable on first use, so a
    value equal to the default is not the user's. A folder that cannot be written is refused either way: the
    option is wrong whichever folder is used this time.
    """
    if not folder:
        return
    from pathlib import Path

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    path = Path(folder).expanduser().resolve()
    require_writable(
        "compile_cache", folder, path, "; name a folder you can write, or null for torch's default"
    )
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is not None and os.path.abspath(current) != os.path.abspath(default_cache_dir()):
        return
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)  # inductor reads it at each cache access
    # Triton's kernels beside them (read at each build): inductor's, and those the fused norm op builds on first use
    # outside any compiled graph (compile=capture: 20 s of a cold start on an H100), which would otherwise go to
    # Triton's own ~/.triton/cache, apart from the folder a sweep shares. A user's own TRITON_CACHE_DIR wins.
    os.environ.setdefault("TRITON_CACHE_DIR", str(path / "triton"))


def use_torch_ptxas() -> str | None:
    """Point Triton at the ptxas torch ships (``TRITON_PTXAS_PATH``) before anything compiles, as inductor's
    compile workers do before each build: the path, or None where this torch ships no ptxas (a CPU build) or
    lacks the function (private API, hence the guard); a user's own TRITON_PTXAS_PATH wins.

    Triton's cache key covers the ptxas a build uses, and the process sets the variable only once it first builds
    in-process, so without this one kernel can be cached under two keys (built before and after the variable is
    set, or by a worker), and a warm start builds again whichever its timing asks for: on one H100 (torch 2.11)
    two warm starts of the training step rebuilt 14 and 10 of the fused norm op's kernels (compile 8.5 / 6.3 s),
    and none with this set first (2.8 s each; BENCHMARKS.md, "Cold and warm starts")."""
    try:
        from torch._inductor.runtime.compile_tasks import _set_triton_ptxas_path
    except ImportError:
        return None
    _set_triton_ptxas_path()
    return os.environ.get("TRITON_PTXAS_PATH")


def compile_network(net: torch.nn.Module, options: dict[str, Any], scope: str = "net") -> None:
    """torch.compile ``net`` in place (parameter names, and so checkpoints, unchanged): the whole network
    (``scope="net"``, one graph) or each of its repeated blocks (``"blocks"``, regional compilation: Dynamo
    compiles a block class's forward once per distinct input shape and reuses it for every instance, so a deep
    network compiles in a fraction of the time, at the price of the fusions across block boundaries).
    torch's hierarchical compilation (``torch.compiler.nested_compile_region`` on a block, one graph still) is
    not offered: on the UNet it fails inside inductor (torch 2.14; BENCHMARKS.md, "Cold and warm starts").
    """
    check_scope(net, scope)
    if scope == "net":
        net.compile(options=options)
        return
    for module in net.modules():
        if isinstance(module, net.repeated_blocks):
            module.compile(options=options)


def fused_norm_warning(net: torch.nn.Module, mode: str, cuda: bool) -> str | None:
    """A warning when ``net`` would run the fused GroupNorm+SiLU Triton op under a compile mode without CUDA
    graphs: on Ho et al.'s network the step was then 1.77× slower than without the op, with CUDA graphs 12% faster
    (BENCHMARKS.md, "Fused GroupNorm + SiLU kernels"; likely cause: each of its launches goes through Python)."""
    from diffusion_lab.nets.fused_norm import GroupNormSiLU

    fused = {m.fused for m in net.modules() if isinstance(m, GroupNormSiLU)} - {"false"}
    if not cuda or not fused or compile_options(mode).get("triton.cudagraphs"):
        return None
    return (
        f"model.fused_norm={sorted(fused)[0]} with compile={mode}: the fused GroupNorm+SiLU op is slower than "
        "PyTorch's without CUDA graphs (1.77x the step on the Ho et al. network); use compile=reduce-overhead "
        "or model.fused_norm=false"
    )


def check_scope(net: torch.nn.Module, scope: str) -> None:
    """A one-line error for a ``compile_scope`` that is unknown or that ``net`` cannot be compiled by."""
    if scope not in COMPILE_SCOPES:
        raise UserError(f"compile_scope={scope!r} is not one of {list(COMPILE_SCOPES)}")
    if scope == "blocks" and not getattr(net, "repeated_blocks", None):
        raise UserError(
            f"compile_scope=blocks needs a network that lists its repeated_blocks; {type(net).__name__} does not: "
            "use compile_scope=net"
        )


def compile_stats() -> dict[str, Any]:
    """Seconds this process spent in torch.compile and the graphs it compiled; empty when nothing was compiled.

    ``compile_s`` is the whole (Dynamo's own total), in parts that add up to it: ``trace_s`` Dynamo tracing the
    Python code (and building guards), ``autograd_s`` AOTAutograd (the joint forward/backward trace, its
    partition, or loading its cache), and with inductor ``passes_s`` inductor's graph passes, lowering and
    scheduling, ``kernels_s`` generating the kernels' code and building them (Triton / C++ compiles, awaited):
    what a warm compile cache skips. Read from Dynamo's own timers, which torch keeps for its
    ``TORCH_LOGS``/``print_time_report`` diagnostics (private, hence the guard)."""
    try:
        from torch._dynamo.utils import calculate_time_spent, counters
    except ImportError:
        return {}
    graphs = int(counters["stats"]["unique_graphs"])
    if graphs == 0:
        return {}
    spent = calculate_time_spent()
    stats = {"compile_s": round(spent.get("total_wall_time", 0.0), 1), "graphs": graphs}
    stats.update(compile_phases(spent, inductor_ran=bool(counters["inductor"])))
    stats.update(cache_outcomes(counters))
    stats.update(extra_graph_reasons(counters))
    return stats


def extra_graph_reasons(counters: Any) -> dict[str, list[str]]:
    """Why the process compiled more than one graph, in Dynamo's own words: for each recompilation the guard
    that failed (``recompiles``: '0/1: tensor 'x' size mismatch at index 0. expected 128, actual 64'), and why
    each graph was split (``graph_breaks``). A second graph costs a second compile, and one with the same
    inputs as the first (a guard on something the graph does not compute with) is pure overhead. From Dynamo's
    records of guard failures, which ``torch._dynamo.reset`` clears with its counters; empty when none."""
    try:
        from torch._dynamo.utils import guard_failures
    except ImportError:  # a torch without the record: the counts alone
        guard_failures = {}
    # A recompilation records a failure for every cache entry it checked: each reason once, in order.
    failed = dict.fromkeys(_first_line(r) for reasons in guard_failures.values() for r in reasons)
    found = {
        "recompiles": list(failed),
        "graph_breaks": sorted({_first_line(str(r)) for r in counters["graph_break"]}),
    }
    return {key: reasons for key, reasons in found.items() if reasons}


def _first_line(reason: str, limit: int = 240) -> str:
    """A reason's first line (a guard failure may append the user's stack), at most ``limit`` characters."""
    line = reason.strip().splitlines()[0] if reason.strip() else "no reason given"
    return line if len(line) <= limit else line[: limit - 1] + "…"


# (key in the result, Dynamo's counter group, its counter): how each compiled graph met the two on-disk caches.
CACHE_COUNTERS = (
    ("aot_cache_hit", "aot_autograd", "autograd_cache_hit"),
    ("aot_cache_miss", "aot_autograd", "autograd_cache_miss"),
    ("aot_cache_bypass", "aot_autograd", "autograd_cache_bypass"),
    ("fx_cache_hit", "inductor", "fxgraph_cache_hit"),
    ("fx_cache_miss", "inductor", "fxgraph_cache_miss"),
    ("fx_cache_bypass", "inductor", "fxgraph_cache_bypass"),
)


def cache_outcomes(counters: Any) -> dict[str, int]:
    """How the graphs met AOTAutograd's cache (the joint forward/backward graph; a hit skips its trace and
    inductor) and inductor's FX-graph cache (one entry per forward or backward graph), from Dynamo's counters:
    a warm run whose AOTAutograd graphs missed or bypassed repeats most of a cold compile outside the kernels.
    Empty where inductor did not run."""
    if not counters["inductor"]:
        return {}
    return {key: int(counters[group][name]) for key, group, name in CACHE_COUNTERS}


def compile_phases(spent: dict[str, float], inductor_ran: bool) -> dict[str, float]:
    """Dynamo's nested timers (``calculate_time_spent``) as parts that add up to its total: a frame's compile
    holds the backend's (AOTAutograd, which holds inductor's forward compile), the lazily compiled backward holds
    inductor's backward compile, and inductor's compile holds its code generation. Empty for another backend
    (no AOTAutograd or inductor to split off); a cache hit skips inductor's timers (0 s)."""
    if not inductor_ran:
        return {}
    frame, backend = spent.get("entire_frame_compile", 0.0), spent.get("backend_compile", 0.0)
    inductor, code_gen = spent.get("inductor_compile", 0.0), spent.get("code_gen", 0.0)
    phases = {
        "trace_s": frame - backend,
        "autograd_s": backend + spent.get("entire_backward_compile", 0.0) - inductor,
        "passes_s": inductor - code_gen,
        "kernels_s": code_gen,
    }
    return {key: round(max(0.0, seconds), 1) for key, seconds in phases.items()}
