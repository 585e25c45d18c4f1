"""What a cold start costs and how fast the step then runs: experiment=fmnist_fast's training step compiled by
inductor with CUDA graphs, against the same step uncompiled with the network's forward and backward captured as
CUDA graphs (``compile=capture``'s ``CapturedNet`` over ``torch.cuda.make_graphed_callables``: no tracing, no
AOTAutograd, no kernels generated).

A small network's eager step is bound by kernel launches (1,382 img/s on an H200, against about 10,000 compiled),
and a graph replays its launches as one; the compiler adds fusion on top, for about a minute of compiling on a
cold start. This measures the two halves apart: the eager kernels' own speed once launches are gone, and what
each setting costs before its first step.

Each setting runs in a fresh Python process with empty inductor and Triton cache folders (a cold start): the
network (``conf/model/unet_small.yaml`` at 28x28x1, dropout 0), fused AdamW, bf16 autocast, batch 128; the step
draws t and noise, corrupts x0 (linear schedule, T = 1000), calls the network, takes the mean squared error to
the noise, steps the optimizer. One JSON line per setting: the first step's seconds (setup: compiling or
capturing, cuDNN's choices, the first allocations), the median step time and img/s over the timed steps, peak
memory, and the loss's mean over the last timed steps (the settings must train alike).

    eager              the plain step (launch-bound; the reference for the others' arithmetic)
    graphs             the network captured as CUDA graphs, PyTorch's GroupNorm and SiLU
    graphs_fused       the same with the fused GroupNorm+SiLU Triton op, its kernels built all at once before the
                       capture (``nets.fused_norm.build_kernels_at_once``), as compile=capture trains
    graphs_fused_first_use  the same with the op's kernels built one by one on first use, inside the capture
                       (what ``graphs_fused`` ran before the builder, BENCHMARKS.md 2026-12-07)
    graphs_cl, graphs_fused_cl  graphs and graphs_fused with the network and its input in channels-last memory
                       (``channels_last=true``): cuDNN's convolutions in NHWC, the op's loads along channels
    compiled           torch.compile, compile=reduce-overhead's options, the op inside the graph (as fmnist_fast
                       trained until it moved to compile=capture)

Usage, on a GPU, from the repository root: ``python benchmarks/graphed_step.py [--only a,b] [--steps N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = (
    "eager",
    "graphs",
    "graphs_fused",
    "graphs_fused_first_use",
    "graphs_cl",
    "graphs_fused_cl",
    "compiled",
)


def build(torch, setting: str, batch: int):
    """The network, its optimizer and a batch, on the GPU, for ``setting``."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from unet_small import unet_small

    torch.manual_seed(0)
    fused = "false" if setting in ("eager", "graphs", "graphs_cl") else "true"
    net = unet_small(dropout=0.0, fused_norm=fused).cuda()
    x0 = torch.rand(batch, 1, 28, 28, device="cuda") * 2 - 1
    if setting.endswith("_cl"):  # as channels_last=true trains: the network and its input in NHWC memory
        net = net.to(memory_format=torch.channels_last)
        x0 = x0.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4, fused=True)
    return net, opt, x0


def alphas_bar(torch):
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64, device="cuda")
    return torch.cumprod(1 - betas, 0).float()


def prepare(setting: str, net):
    """The network as the step calls it: plain, compiled, or captured (``compile=capture``'s ``CapturedNet``)."""
    if setting == "compiled":
        from diffusion_lab.compile_policy import compile_network, compile_options, use_torch_ptxas

        use_torch_ptxas()
        compile_network(net, compile_options("reduce-overhead"))
        return net
    if setting.startswith("graphs"):  # as compile=capture trains: captured at the first call
        from diffusion_lab.capture import CapturedNet
        from diffusion_lab.nets.fused_norm import kernel_builder

        return CapturedNet(net, build=None if setting == "graphs_fused_first_use" else kernel_builder(net))
    return net


def step(torch, call, opt, x0, ab):
    t = torch.randint(0, 1000, (x0.shape[0],), device="cuda")
    noise = torch.randn_like(x0)
    a = ab[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.autocast("cuda", torch.bfloat16):  # as Lightning's bf16-mixed
        out = call(xt, t)
    loss = (out.float() - noise).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad()  # as Lightning does (set_to_none)
    return loss.detach()


def run_setting(setting: str, batch: int, steps: int) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    torch.backends.cudnn.benchmark = False  # cuDNN's heuristics, as trainer=gpu
    start = time.perf_counter()
    net, opt, x0 = build(torch, setting, batch)
    ab = alphas_bar(torch)
    call = prepare(setting, net)
    step(torch, call, opt, x0, ab)
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    for _ in range(20):
        step(torch, call, opt, x0, ab)
    torch.cuda.synchronize()
    times, losses = [], []
    for _ in range(steps):
        s = time.perf_counter()
        losses.append(step(torch, call, opt, x0, ab))
        torch.cuda.synchronize()
        times.append(time.perf_counter() - s)
    # Without a sync between steps (as training runs): the pace the host can keep.
    s = time.perf_counter()
    for _ in range(steps):
        step(torch, call, opt, x0, ab)
    torch.cuda.synchronize()
    pipelined = (time.perf_counter() - s) / steps
    median = sorted(times)[len(times) // 2]
    return {
        "setting": setting,
        "first_step_s": round(first, 2),
        "median_step_ms": round(median * 1e3, 3),
        "pipelined_step_ms": round(pipelined * 1e3, 3),
        "img_per_s": round(batch / pipelined, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "loss_last": round(float(torch.stack(losses[-50:]).mean()), 4),
        "batch": batch,
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SETTINGS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_setting(args.case, args.batch, args.steps)), flush=True)
        return
    only = args.only.split(",")
    for setting in only:  # every name checked before any case runs
        if setting not in SETTINGS:
            print(f"--only: {setting!r} is not a setting; choose from {list(SETTINGS)}", file=sys.stderr)
            sys.exit(2)
    for setting in only:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": f"{cache}/triton"}
            cmd = [
                sys.executable,
                __file__,
                "--case",
                setting,
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
            ]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            print(json.dumps(case_row(setting, done)), flush=True)


def case_row(setting: str, done: subprocess.CompletedProcess) -> dict:
    """A case's JSON line, or for a case that failed its setting and the last line of its error."""
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    errors = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return {"setting": setting, "ok": False, "error": errors[-1] if errors else f"exit {done.returncode}"}


if __name__ == "__main__":
    main()
