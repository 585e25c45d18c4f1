"""Would Dynamo's experimental ``caching_precompile`` make a warm start cheaper, and is it safe in a shared cache?

Each case runs in a fresh Python process (a start is a new process), all on one inductor cache folder
(``TORCHINDUCTOR_CACHE_DIR``, which the runner empties first), compiling a UNet the way training does
(``compile_network``, the whole network) and timing its first forward+backward:

    cold        network A, nothing cached
    warm        network A again: inductor's FX-graph and AOTAutograd caches hit, Dynamo traces again
    save        network A with caching_precompile on: Dynamo's own package is written after the step
    precompiled network A with caching_precompile on: the package is loaded, no tracing
    other       network B (other channel widths) with caching_precompile on, same folder: a sweep's next cell

One JSON line per case: the first step's seconds, Dynamo's compile seconds and graphs, its dynamo-cache
counters, the largest difference from the eager network's output (weights nudged off their initialisation, whose
zero output layer would hide any), or the error that stopped the case.

Usage, from the repository root: ``python benchmarks/precompile_probe.py [--device auto|cpu|cuda]`` (through
``python benchmarks/run.py precompile``, which gives it empty cache folders and records a manifest).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
NETWORKS = {"A": 32, "B": 16}  # base channels of unet_tiny's shape (channel_mult 1, 2, 2; attention at 7x7)
CASES = [
    ("cold", "A", False),
    ("warm", "A", False),
    ("save", "A", True),
    ("precompiled", "A", True),
    ("other", "B", True),
]


def step(network: str, precompile: bool, device: str) -> dict:
    """One case, in this process: compile, one forward+backward, compare with eager."""
    sys.path.insert(0, str(SRC))
    import torch
    from torch._dynamo.utils import calculate_time_spent, counters

    from diffusion_lab.compile_policy import compile_network, compile_options
    from diffusion_lab.nets import UNet

    torch._dynamo.config.caching_precompile = precompile
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu")
    )
    torch.manual_seed(0)
    kwargs = dict(channel_mult=[1, 2, 2], num_res_blocks=1, attention_resolutions=[7], groups=8, dropout=0.0)
    net = UNet(in_channels=1, image_size=28, base_channels=NETWORKS[network], **kwargs).to(dev)
    x, t = torch.randn(8, 1, 28, 28, device=dev), torch.randint(0, 1000, (8,), device=dev)
    with torch.no_grad():
        for p in net.parameters():  # the zero-initialised output layer would make every output 0
            p.add_(0.02 * torch.randn_like(p))
        eager = net(x, t)
    compile_network(net, compile_options("default"))
    start = time.perf_counter()
    out = net(x, t)
    out.square().mean().backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    first_step = time.perf_counter() - start
    if precompile:
        torch.compiler.save_cache_artifacts()  # with caching_precompile, also writes Dynamo's package
    return {
        "first_step_s": round(first_step, 3),
        "compile_s": round(calculate_time_spent().get("total_wall_time", 0.0), 3),
        "graphs": int(counters["stats"]["unique_graphs"]),
        "dynamo_cache": dict(counters["dynamo_cache"]),
        "max_abs_diff": float((out.detach() - eager).abs().max()),
        "device": str(dev),
        "torch": torch.__version__,
    }


def run_case(name: str, network: str, precompile: bool, device: str) -> dict:
    """The case in a child process; its JSON result, or the last line of its error."""
    code = f"import json, precompile_probe as p; print(json.dumps(p.step({network!r}, {precompile}, {device!r})))"
    cwd = Path(__file__).resolve().parent
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    row = {"case": name, "network": network, "caching_precompile": precompile}
    row["process_s"] = round(time.perf_counter() - start, 2)
    if proc.returncode == 0:
        return {**row, "ok": True, **json.loads(proc.stdout.strip().splitlines()[-1])}
    errors = [line for line in proc.stderr.strip().splitlines() if line and not line.startswith(" ")]
    return {**row, "ok": False, "error": errors[-1] if errors else f"exit {proc.returncode}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    opts = p.parse_args(argv)
    for name, network, precompile in CASES:
        print(json.dumps(run_case(name, network, precompile, opts.device)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
