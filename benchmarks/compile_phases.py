"""Where the compile time of experiment=fmnist_fast's training step goes, cold and warm, and what shortens it.

Each case runs in a fresh Python process (a start is a new process) and compiles the network of
``experiment=fmnist_fast`` (``conf/model/unet_small.yaml`` for 28x28x1, dropout 0) as training compiles it
(``compile_network``, the whole network, ``compile=reduce-overhead``), then times one forward + loss + backward
(bf16 autocast on CUDA, as ``trainer=gpu``). Dynamo's timers split the compile into the parts the training
summary prints (``compile_policy.compile_stats``): tracing, AOTAutograd, inductor's passes, kernels.

    net                      cold (empty cache folders), then warm (the same folders again)
    no_pattern_matcher       cold, inductor's pattern-matcher passes off (part of its graph passes)
    nested_regions           cold, each ResBlock a nested compile region (hierarchical compilation: a block
                             signature traced once, stamped out for every block with the same shapes)
    pool_ready               warm, twice, on a copy of ``net``'s caches as its cold case left them, the step run
                             only once inductor's compile workers are ready; ``net`` warm runs twice too, on the
                             caches themselves. On an H100 (2026-12-06) consecutive warm starts compiled 8.5, 6.3,
                             then 2.7 s, the first two building 13 and 11 of the fused norm op's Triton kernels
                             anew. This pair showed why (2026-12-06): with the workers ready no kernel was built
                             again, as they came 15 then 9, each differing from its cached namesake in the cache
                             key alone. A kernel built in the parent (workers not yet up) and one built by a
                             worker are keyed differently; each kernel a case builds is set against the nearest
                             cached one of its name.
    ptxas_env                cold, then warm twice, on its own caches, with TRITON_PTXAS_PATH pointed at the ptxas
                             torch ships before anything compiles, as inductor's workers do before each build
                             (torch 2.14's parent does too). On an H100 (2026-12-06) neither warm case built a
                             kernel again (compile 2.8 s twice) while ``net``'s built 14 and 10 (8.5, 6.3 s), each
                             differing from its cached namesake in the key alone; training and evaluation now
                             do this (``compile_policy.use_torch_ptxas``); the other variants keep
                             the path they had before, so the pair stays comparable.

Every variant's own cache folders (a variant must not warm another's). One JSON line per case: first step,
the compile parts, graphs, how the graphs met AOTAutograd's and inductor's caches (counts, and the caches' own
words on each miss or bypass), the largest difference of the output and of the gradients from the eager network's
(weights nudged off their initialisation, whose zero output layer would hide any), or the error that stopped it.

Usage, from the repository root: ``python benchmarks/compile_phases.py [--device auto|cpu|cuda] [--batch N]``
(through ``python benchmarks/run.py phases``, which gives it empty cache folders and records a manifest).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("net", "no_pattern_matcher", "nested_regions", "pool_ready", "ptxas_env")
CASES = [
    ("net", "cold"),
    ("net", "warm"),
    ("pool_ready", "warm"),
    ("net", "warm"),
    ("pool_ready", "warm"),
    ("ptxas_env", "cold"),
    ("ptxas_env", "warm"),
    ("ptxas_env", "warm"),
    ("no_pattern_matcher", "cold"),
    ("nested_regions", "cold"),
]
# A variant that starts warm from a copy of another's caches, taken right after that one's cold case.
WARM_FROM = {"pool_ready": "net"}


def network(torch):
    """experiment=fmnist_fast's network, its weights nudged off their initialisation."""
    from unet_small import unet_small

    torch.manual_seed(0)
    net = unet_small(dropout=0.0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


def training_step(torch, net, x, t):
    """Forward, L_simple against a fixed target, backward; the output and the gradients."""
    net.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=x.is_cuda):
        out = net(x, t)
    (out.float() - x).square().mean().backward()
    return out.detach().float(), [p.grad.detach().float().clone() for p in net.parameters()]


def nested_region(torch, fn):
    """``fn`` as a nested compile region; a UNet's blocks have more signatures than the default 8 entries, so
    the entries are raised where the installed torch has that option (2.14 does, 2.11 does not)."""
    region = torch.compiler.nested_compile_region
    if "max_reuse_entries" in inspect.signature(region).parameters:
        return region(fn, max_reuse_entries=64)
    return region(fn)


class CacheNotes(logging.Handler):
    """While entered, the compile caches' own words on each graph that did not hit (a miss with its key, a
    bypass with its reason, an entry that could not be saved or loaded): why a warm start compiled again."""

    LOGGERS = ("torch._functorch._aot_autograd.autograd_cache", "torch._inductor.codecache")
    KEEP = ("miss", "bypass", "unable")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self._levels: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(word in message.lower() for word in self.KEEP) and len(self.lines) < 8:
            self.lines.append(message[:300])

    def __enter__(self) -> CacheNotes:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._levels.append(logger.level)
            logger.setLevel(logging.INFO)
            logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        for name, level in zip(self.LOGGERS, self._levels):
            logging.getLogger(name).removeHandler(self)
            logging.getLogger(name).setLevel(level)


def wait_for_compile_workers(timeout: float = 120.0) -> float | None:
    """Start inductor's compile workers and wait until they take work: the seconds waited, or None where this
    torch compiles without them (one compile thread, or no such pool). Private API, hence the guards."""
    try:
        from torch._inductor.async_compile import AsyncCompile, get_compile_threads
    except ImportError:
        return None
    if get_compile_threads() <= 1:
        return None
    start = time.perf_counter()
    AsyncCompile.warm_pool()
    while not AsyncCompile.use_process_pool():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"inductor's compile workers not ready after {timeout:.0f} s")
        time.sleep(0.02)
    return round(time.perf_counter() - start, 2)


def triton_kernels(folder: Path) -> set[str]:
    """The kernels in a Triton cache folder, one ``<hash>/<kernel>`` per compiled kernel."""
    return {
        f"{p.parent.name}/{p.name[len('__grp__') : -len('.json')]}" for p in folder.glob("*/__grp__*.json")
    }


# The text artefacts compared, by the name they are shown under.
TEXTS = {"(source)": ".source", "(ttir)": ".ttir"}


def _artefacts(folder: Path, kernel: str) -> dict:
    """A cached kernel's metadata (Triton's ``<name>.json``) and, where written, its source and TTIR texts (the
    TTIR's signature carries the arguments' specialisation, which the metadata leaves out)."""
    where, name = kernel.split("/", 1)
    meta = folder / where / f"{name}.json"
    found = json.loads(meta.read_text()) if meta.is_file() else {}
    for key, suffix in TEXTS.items():
        text = folder / where / f"{name}{suffix}"
        if text.is_file():
            found[key] = text.read_text()
    return found


def _common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _where_texts_differ(a: str, b: str, width: int = 100) -> list[str]:
    """The two texts around their first difference, ``width`` characters either side."""
    i = _common_prefix(a, b)
    return [a[max(0, i - width) : i + width], b[max(0, i - width) : i + width]]


def closest_difference(folder: Path, built: list[str], before: set[str], limit: int = 3) -> list[dict]:
    """For each of the first ``limit`` kernels a case built, what sets it apart from the cached kernel of the
    same name nearest to it (fewest differing entries, then the longest common TTIR): why the cache did not
    answer for it. Values cut to 200 characters; texts shown around their first difference."""
    out = []
    for kernel in built[:limit]:
        mine = _artefacts(folder, kernel)
        name = kernel.split("/", 1)[1]
        diffs = []
        for other in sorted(k for k in before if k.split("/", 1)[1] == name):
            theirs = _artefacts(folder, other)
            keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            common = _common_prefix(mine.get("(ttir)", ""), theirs.get("(ttir)", ""))
            diffs.append(((len(keys), -common), other, keys, theirs))
        if not diffs:
            out.append({"kernel": kernel, "cached_of_that_name": 0})
            continue
        _, other, keys, theirs = min(diffs, key=lambda d: d[0])
        shown = {}
        for key in keys:
            a, b = mine.get(key), theirs.get(key)
            if key in TEXTS and isinstance(a, str) and isinstance(b, str):
                shown[key] = _where_texts_differ(a, b)
            else:
                shown[key] = [str(a)[:200], str(b)[:200]]
        out.append({"kernel": kernel, "closest": other, "cached_of_that_name": len(diffs), "differs": shown})
    return out


def case(variant: str, device: str, batch: int) -> dict:
    """One case, in this process: the eager step, then the compiled one."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from torch._inductor import config as inductor_config

    from diffusion_lab.compile_policy import compile_network, compile_options, compile_stats, use_torch_ptxas
    from diffusion_lab.nets import unet

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu")
    )
    if variant == "no_pattern_matcher":
        inductor_config.pattern_matcher = False
    if variant == "nested_regions":
        unet.ResBlock.forward = nested_region(torch, unet.ResBlock.forward)
    if variant == "ptxas_env":
        use_torch_ptxas()
    net = network(torch).to(dev)
    x, t = torch.randn(batch, 1, 28, 28, device=dev), torch.randint(0, 1000, (batch,), device=dev)
    eager_out, eager_grads = training_step(torch, net, x, t)
    compile_network(net, compile_options("reduce-overhead"))
    pool_wait = wait_for_compile_workers() if variant == "pool_ready" else None
    notes = CacheNotes()
    start = time.perf_counter()
    with notes:
        out, grads = training_step(torch, net, x, t)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    first_step = time.perf_counter() - start
    return {
        "first_step_s": round(first_step, 2),
        **compile_stats(),
        "cache_notes": notes.lines,
        "pool_wait_s": pool_wait,
        "ptxas_env_after": os.environ.get("TRITON_PTXAS_PATH"),  # set by the case, or by inductor's own path
        "max_abs_diff_out": float((out - eager_out).abs().max()),
        "max_abs_diff_grad": max(float((g - e).abs().max()) for g, e in zip(grads, eager_grads)),
        "device": str(dev),
        "batch": batch,
        "torch": torch.__version__,
    }


def cache_folders(variant: str) -> Path:
    """The variant's own inductor and Triton cache folders, below one base."""
    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", "/tmp/compile_phases")) / variant


def run_case(variant: str, start: str, device: str, batch: int) -> dict:
    """The case in a child process with the variant's own cache folders; its JSON result or its error line,
    with the Triton kernels the case built (kernels it found in the cache are not listed)."""
    base = cache_folders(variant)
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(base / "inductor"),
        "TRITON_CACHE_DIR": str(base / "triton"),
    }
    before = triton_kernels(base / "triton")
    code = f"import json, compile_phases as p; print(json.dumps(p.case({variant!r}, {device!r}, {batch})))"
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parent, env=env, capture_output=True, text=True
    )
    built = sorted(triton_kernels(base / "triton") - before)
    row = {"variant": variant, "start": start, "process_s": round(time.perf_counter() - began, 1)}
    row["triton_built"] = len(built)
    row["triton_built_names"] = sorted({name.split("/", 1)[1] for name in built})
    if built and before:
        row["triton_built_vs_cached"] = closest_difference(base / "triton", built, before)
    if proc.returncode == 0:
        return {**row, "ok": True, **json.loads(proc.stdout.strip().splitlines()[-1])}
    errors = [line for line in proc.stderr.strip().splitlines() if line and not line.startswith(" ")]
    return {**row, "ok": False, "error": errors[-1][:400] if errors else f"exit {proc.returncode}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch", type=int, default=128, help="fmnist_fast's batch; smaller on a CPU")
    p.add_argument("--only", default="", help="comma-separated variants (default: all)")
    opts = p.parse_args(argv)
    chosen = set(opts.only.split(",")) - {""}
    chosen |= {WARM_FROM[v] for v in chosen if v in WARM_FROM}  # a copy needs its source's cold case
    for variant, start in CASES:
        if not chosen or variant in chosen:
            print(json.dumps(run_case(variant, start, opts.device, opts.batch)), flush=True)
        if start == "cold":
            for copy, source in WARM_FROM.items():
                if source == variant and (not chosen or copy in chosen):
                    shutil.rmtree(cache_folders(copy), ignore_errors=True)
                    shutil.copytree(cache_folders(variant), cache_folders(copy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
