"""GroupNorm(+AdaGN)+SiLU on a CUDA GPU: the Triton path (nets/fused_norm.py) against PyTorch.

For each UNet layer shape (Ho et al.'s CIFAR-10 UNet: 128 / 256 channels at 32, 16, 8, 4; the Fashion-MNIST
UNet: 64 / 128 channels at 28, 14, 7; batch 128, 32 groups, bf16, channels-last) it prints one JSON line:
the largest absolute error of the forward and of every gradient against a float32 reference for the eager
PyTorch path and for the Triton path, and the median forward+backward time (CUDA events) of eager PyTorch,
torch.compile'd PyTorch (one static compilation per shape) and the Triton path (``--compile-triton``: also the
Triton path under torch.compile, fullgraph), and the GPU time of each path's kernels alone (``kernel_ms``, from
the profiler: the host's launch and autograd work left out, as a CUDA-graph replay leaves it out). The inputs are what bf16-mixed
training hands the norm: a bf16 activation, float32 weight and bias, bf16 scale and shift (a Linear under
autocast); the PyTorch paths run under autocast and end in a bf16 cast, as the convolution after them does.

Usage, from the repository root:
``python benchmarks/fused_norm_bench.py [--iters 50] [--no-adagn] [--nchw] [--compile-triton]``.
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

from diffusion_lab.nets.fused_norm import group_norm_silu_reference  # noqa: E402
from diffusion_lab.nets.fused_norm_ops import group_norm_silu  # noqa: E402

CIFAR = [(128, c, s) for c in (128, 256) for s in (32, 16, 8, 4)]
FMNIST = [(128, c, s) for c in (64, 128) for s in (28, 14, 7)]
GROUPS = 32
EPS = 1e-6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=50, help="timed forward+backward passes per setting")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-adagn", action="store_true", help="plain silu(group_norm(x)), no scale/shift")
    p.add_argument("--nchw", action="store_true", help="NCHW-contiguous inputs instead of channels-last")
    p.add_argument(
        "--compile-triton", action="store_true", help="also time the Triton path under torch.compile (slower)"
    )
    return p.parse_args(argv)


def make_inputs(batch: int, channels: int, size: int, adagn: bool, nchw: bool) -> dict:
    """A bf16 activation, float32 affine parameters, bf16 scale/shift with the strides of a chunked
    projection, all requiring grad; and a bf16 output gradient."""
    dev = torch.device("cuda")
    x = torch.randn(batch, channels, size, size, device=dev, dtype=torch.bfloat16) * 2 + 0.5
    if not nchw:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = 1 + 0.1 * torch.randn(channels, device=dev)
    bias = 0.1 * torch.randn(channels, device=dev)
    proj = 0.3 * torch.randn(batch, 2 * channels, 1, 1, device=dev, dtype=torch.bfloat16)
    scale, shift = (t.detach() for t in proj.chunk(2, dim=1)) if adagn else (None, None)
    leaves = {"x": x, "weight": weight, "bias": bias, "scale": scale, "shift": shift}
    for t in leaves.values():
        if t is not None:
            t.requires_grad_(True)
    return {**leaves, "dy": torch.randn_like(x)}


def leaves_of(inputs: dict) -> list[tuple[str, torch.Tensor]]:
    return [(k, inputs[k]) for k in ("x", "weight", "bias", "scale", "shift") if inputs[k] is not None]


def torch_path(x, weight, bias, scale, shift):
    """PyTorch's GN(+AdaGN)+SiLU as bf16-mixed training runs it: under autocast, cast to bf16 at the end."""
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = group_norm_silu_reference(x, GROUPS, weight, bias, EPS, scale, shift)
    return y.to(torch.bfloat16)


def triton_path(x, weight, bias, scale, shift):
    flat = [None if t is None else t.flatten(1) for t in (scale, shift)]  # (B, C, 1, 1) -> (B, C) views
    return group_norm_silu(x, weight, bias, *flat, GROUPS, EPS)[0]


def float32_path(x, weight, bias, scale, shift):
    return group_norm_silu_reference(x, GROUPS, weight, bias, EPS, scale, shift)


def forward_backward(fn, inputs: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    y = fn(*(inputs[k] for k in ("x", "weight", "bias", "scale", "shift")))
    grads = torch.autograd.grad(y, [t for _, t in leaves_of(inputs)], inputs["dy"])
    return y, list(grads)


def max_errors(fn, inputs: dict, reference: tuple) -> dict[str, float]:
    """Largest absolute error of y and of each gradient against the float32 reference."""
    y, grads = forward_backward(fn, inputs)
    ref_y, ref_grads = reference
    names = ["y"] + ["d" + k for k, _ in leaves_of(inputs)]
    outs = [y, *grads]
    refs = [ref_y, *ref_grads]
    return {n: round((o.float() - r).abs().max().item(), 6) for n, o, r in zip(names, outs, refs)}


def float32_reference(inputs: dict) -> tuple:
    """The PyTorch path in float32 on upcast copies of the same inputs."""
    up = {k: (v.detach().float().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}
    up["dy"] = up["dy"].detach()
    return forward_backward(float32_path, up)


def median_ms(fn, inputs: dict, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        forward_backward(fn, inputs)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for start, end in zip(starts, ends):
        start.record()
        forward_backward(fn, inputs)
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def kernel_ms(fn, inputs: dict, iters: int) -> float:
    """GPU time of the kernels of one forward+backward (the profiler's sum of device self-times): what a
    CUDA-graph replay of it costs, without the host's launch and autograd work that ``median_ms`` includes."""
    from torch.profiler import ProfilerActivity, profile

    forward_backward(fn, inputs)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            forward_backward(fn, inputs)
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / iters / 1000.0


def bench_setting(shape: tuple[int, int, int], args: argparse.Namespace) -> dict:
    batch, channels, size = shape
    inputs = make_inputs(batch, channels, size, not args.no_adagn, args.nchw)
    paths = {"eager": torch_path, "compiled": torch.compile(torch_path, dynamic=False), "triton": triton_path}
    if args.compile_triton:  # fullgraph: the op must not break the graph
        paths["triton_compiled"] = torch.compile(triton_path, dynamic=False, fullgraph=True)
    reference = float32_reference(inputs)
    errors = {name: max_errors(fn, inputs, reference) for name, fn in paths.items() if name != "compiled"}
    ms = {name: round(median_ms(fn, inputs, args.iters, args.warmup), 4) for name, fn in paths.items()}
    kernels = {name: round(kernel_ms(fn, inputs, args.iters), 4) for name, fn in paths.items()}
    # Fewest bytes a forward+backward must move: x and y, then x, dy and dx, each once, in bf16.
    min_bytes = 5 * inputs["x"].numel() * inputs["x"].element_size()
    return {
        "shape": list(inputs["x"].shape),
        "groups": GROUPS,
        "adagn": not args.no_adagn,
        "layout": "nchw" if args.nchw else "channels_last",
        "ms": ms,
        "triton_speedup_vs_compiled": round(ms["compiled"] / ms["triton"], 2),
        "kernel_ms": kernels,
        "triton_kernel_speedup_vs_compiled": round(kernels["compiled"] / kernels["triton"], 2),
        "triton_gb_per_s": round(min_bytes / ms["triton"] / 1e6, 1),
        "max_abs_err_vs_fp32": errors,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "error: fused_norm_bench times CUDA kernels and needs a CUDA GPU; none is visible",
            file=sys.stderr,
        )
        return 2
    torch.manual_seed(0)
    torch._dynamo.config.cache_size_limit = 64  # one static compile per setting
    start = time.perf_counter()
    for shape in CIFAR + FMNIST:
        print(json.dumps(bench_setting(shape, args)), flush=True)
    device = torch.cuda.get_device_name()
    print(
        json.dumps(
            {"device": device, "torch": torch.__version__, "wall_s": round(time.perf_counter() - start, 1)}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
