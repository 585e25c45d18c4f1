"""Ho et al.'s CIFAR-10 UNet with ``fused_norm`` off and on, compiled as training compiles it, on a CUDA GPU.

For each setting one JSON line: whether the fused network compiles as one graph (``fullgraph=True``), how far
its compiled output and gradients are from the eager PyTorch-path network's (same weights, bf16 autocast,
channels-last, inductor's layout optimization forced as ``channels_last=true`` does), and the median time of a
forward+backward step (batch 128, CUDA events). The compilations take a minute or two.

Usage, from the repository root: ``python benchmarks/fused_norm_unet.py [--iters 20] [--batch 128] [--mode M]``
(``--mode reduce-overhead`` replays each step as CUDA graphs, as training does).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout, installed or not

from diffusion_lab.bench import HO_CIFAR  # noqa: E402
from diffusion_lab.compile_policy import compile_options  # noqa: E402
from diffusion_lab.nets import UNet  # noqa: E402


def networks() -> dict[str, torch.nn.Module]:
    """The two settings with one state dict, every weight nudged so that no zero-initialised layer hides a
    gradient; no dropout, so that both compute one function."""
    torch.manual_seed(0)
    nets = {
        f: UNet(in_channels=3, image_size=32, **{**HO_CIFAR, "dropout": 0.0}, fused_norm=f)
        for f in ("false", "true")
    }
    with torch.no_grad():
        for p in nets["false"].parameters():
            p.add_(0.02 * torch.randn_like(p))
    nets["true"].load_state_dict(nets["false"].state_dict())
    return {f: n.cuda().to(memory_format=torch.channels_last) for f, n in nets.items()}


def step(net, x, t) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One forward+backward under bf16 autocast: the output and the parameter gradients."""
    torch.compiler.cudagraph_mark_step_begin()  # with CUDA graphs: each call is a new step (no-op otherwise)
    net.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(x, t)
    out.float().square().mean().backward()
    return out.float(), [p.grad.float() for p in net.parameters()]


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def median_step_ms(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument(
        "--mode", default="default", help="torch.compile mode: default, reduce-overhead (CUDA graphs)"
    )
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "error: fused_norm_unet compiles and times a CUDA UNet; no CUDA GPU is visible", file=sys.stderr
        )
        return 2
    nets = networks()
    x = torch.randn(args.batch, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (args.batch,), device="cuda")
    eager_out, eager_grads = step(nets["false"], x, t)
    for fused, net in nets.items():
        start = time.perf_counter()
        compiled = torch.compile(
            net, options=compile_options(args.mode, channels_last=True), fullgraph=fused == "true"
        )
        out, grads = step(compiled, x, t)
        compile_s = time.perf_counter() - start
        row = {
            "fused_norm": fused,
            "mode": args.mode,
            "compile_s": round(compile_s, 1),
            "rel_diff_out_vs_eager_unfused": rel_diff(out, eager_out),
            "worst_rel_diff_grad_vs_eager_unfused": max(rel_diff(g, e) for g, e in zip(grads, eager_grads)),
            "step_ms": round(median_step_ms(lambda c=compiled: step(c, x, t), args.iters), 3),
        }
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
