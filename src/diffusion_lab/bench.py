"""Throughput benchmark of our networks: training steps and DDIM sampling, one JSON line per setting.

    python -m diffusion_lab.bench --systems ours                     # both workloads, our network
    python -m diffusion_lab.bench --workloads train --systems ours --variants eager,compile,compile-ro+cl+lo
    python -m diffusion_lab.bench --models unet_ddpm_cifar,dit_s     # parameters and FLOPs of model presets
    python -m diffusion_lab.bench                                    # ours and diffusers side by side

Workload A (train): 32×32×3 images, batch 128, T = 1000, ε-prediction, L_simple, AdamW, Ho et al.'s CIFAR-10
network (35.7M parameters): images/s over whole optimizer steps, peak memory, achieved TFLOP/s from counted
FLOPs (torch.utils.flop_counter) and their fraction of the GPU's dense bf16 peak.
Workload B (sample): DDIM, 50 steps, batch 512, same network: images/s.

A system is a ``System``: a network and its recipes for a training loss and a DDIM loop. This module defines
``ours``; the peer systems (diffusers' UNet2DModel, the default peer) are defined in the repository's
``benchmarks/bench_peers.py``, loaded only when ``--systems`` names one, so a peer comparison runs from a
checkout with the bench extra (``pip install -e .[bench]``). With peers, one last line gives ratios ours/peer
(best variant of each; `bound` variants, a ceiling rather than a usable network, are left out). The peer runs
in its best reasonable setting: bf16 autocast, fused AdamW, torch.compile.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

from .compile_policy import compile_options
from .diffusion import Diffusion, LinearSchedule, SimpleLoss, q_sample
from .errors import UserError, friendly_errors
from .nets import UNet, count_parameters
from .nets.fused_norm import GroupNormSiLU
from .samplers import DDIMSampler

__all__ = ["Model", "OURS", "System", "ho_unet", "load_systems", "main", "ours_over_peer"]

# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, by device name.
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "4090": 165.2}
# Where the peer systems are defined (in a checkout; not part of the installed package).
PEERS_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_peers.py"

HO_CIFAR = dict(
    base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,), dropout=0.1
)

Forward = Callable[[nn.Module, Tensor, Tensor], Tensor]  # (net, x_t, t) -> ε prediction
Model = Callable[[Tensor, Tensor], Tensor]  # (x_t, t) -> ε prediction


@dataclass(frozen=True)
class System:
    """One implementation under benchmark: its network and its own recipes for workloads A and B."""

    name: str
    network: Callable[[], nn.Module]
    forward: Forward
    # (model, device) -> loss(x0, t, noise): the system's training loss, its forward noising included.
    train_loss: Callable[[Model, torch.device], Callable[[Tensor, Tensor, Tensor], Tensor]]
    # (model, shape, steps, device) -> run(): one DDIM batch, η = 0.
    ddim: Callable[[Model, tuple, int, torch.device], Callable[[], None]]


def ho_unet() -> nn.Module:
    return UNet(in_channels=3, out_channels=3, image_size=32, **HO_CIFAR)


def _ours_train_loss(model: Model, device: torch.device) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The framework's own code path: q_sample + SimpleLoss."""
    diffusion = Diffusion(LinearSchedule(1000), "eps", "fixed_small")
    loss_fn = SimpleLoss()

    def loss(x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        xt = q_sample(diffusion.schedule, x0, t, noise)
        return loss_fn(diffusion, model(xt, t), x0, xt, t, noise)["loss"].mean()

    return loss


def _ours_ddim(model: Model, shape: tuple, steps: int, device: torch.device) -> Callable[[], None]:
    diffusion = Diffusion(LinearSchedule(1000), "eps", "fixed_small")
    sampler = DDIMSampler(steps=steps, eta=0.0)
    return lambda: sampler.sample(diffusion, model, shape, device)


OURS = System("ours", ho_unet, lambda net, x, t: net(x, t), _ours_train_loss, _ours_ddim)


def _peer_module() -> ModuleType:
    if not PEERS_FILE.is_file():
        raise UserError(
            f"--systems: peer systems are defined in {PEERS_FILE}, which this installation lacks; "
            "run from a repository checkout, or pass --systems ours"
        )
    spec = importlib.util.spec_from_file_location("bench_peers", PEERS_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_systems(names: list[str]) -> dict[str, System]:
    """The systems named by ``--systems``: ``ours`` here, any other from benchmarks/bench_peers.py's PEERS."""
    peers: dict[str, System] = _peer_module().PEERS if any(n != "ours" for n in names) else {}
    known = {"ours": OURS, **peers}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"--systems: {unknown} unknown; choose from {sorted(known)}")
    return {n: known[n] for n in names}


def peak_tflops(device: torch.device) -> float | None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def count_train_flops(net: nn.Module, call: Forward, batch: int, device: torch.device) -> int:
    """FLOPs of one forward + backward (counted by torch's FlopCounterMode on the eager network)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, 3, 32, 32, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    with FlopCounterMode(display=False) as counter, torch.autocast(device.type, dtype=torch.bfloat16):
        call(net, x, t).float().pow(2).mean().backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _time(fn: Callable[[], None], warmup: int, iters: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


def _prepare(net: nn.Module, variant: str, device: torch.device) -> nn.Module:
    parts = variant.split("+")
    if "bound" in parts:
        net = strip_to_bound(net)
    if "fn" in parts:
        use_fused_norm(net, "true" if device.type == "cuda" else "auto")  # auto: PyTorch's path off CUDA
    net = net.to(device)
    if "cl" in parts:
        net = net.to(memory_format=torch.channels_last)
    return net


def use_fused_norm(net: nn.Module, fused: str = "true") -> int:
    """The `fn` variant part: every ``GroupNormSiLU`` of our network takes the fused Triton kernels, in training and
    in sampling (``fused_norm=true`` on CUDA: ``auto`` keeps inference on PyTorch's kernels); returns how many it
    switched. A peer's network has none."""
    norms = [m for m in net.modules() if isinstance(m, GroupNormSiLU)]
    for m in norms:
        m.fused = fused
    return len(norms)


class NormFreeSiLU(nn.Module):
    """What is left of a ``GroupNormSiLU`` without its norm: ``silu(x * (1 + scale) + shift)``."""

    def forward(self, x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
        if scale is not None:
            x = x * (1 + scale)
        return torch.nn.functional.silu(x if shift is None else x + shift)


def strip_to_bound(net: nn.Module) -> nn.Module:
    """The `bound` variant part: the same network with every GroupNorm and Dropout replaced by Identity.

    Not a usable network: what is left is the convolutions, attention and matmuls (all the counted FLOPs) with
    their fused pointwise work, so its rate is a ceiling for the real network on this GPU and software stack.
    A GroupNorm fused with AdaGN and SiLU keeps the pointwise part (``NormFreeSiLU``).
    """
    for name, child in net.named_children():
        if isinstance(child, GroupNormSiLU):
            setattr(net, name, NormFreeSiLU())
        elif isinstance(child, (nn.GroupNorm, nn.Dropout)):
            setattr(net, name, nn.Identity())
        else:
            strip_to_bound(child)
    return net


def top_kernels(fn: Callable[[], None], iters: int, device: torch.device, k: int = 12) -> list:
    """[(kernel name, ms per call of fn, share of GPU time)] of the k kernels with the most GPU time."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize(device)
    rows = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    if not rows:
        return []
    key = "self_device_time_total" if hasattr(rows[0], "self_device_time_total") else "self_cuda_time_total"
    total = sum(getattr(e, key) for e in rows) or 1.0
    rows.sort(key=lambda e: getattr(e, key), reverse=True)
    return [
        [e.key[:90], round(getattr(e, key) / iters / 1e3, 3), round(getattr(e, key) / total, 3)]
        for e in rows[:k]
    ]


def _compile_mode(variant: str) -> str | None:
    for part in variant.split("+"):
        if part.startswith("compile"):
            return {
                "compile": "default",
                "compile-ro": "reduce-overhead",
                "compile-ma": "max-autotune-no-cudagraphs",
                "compile-max": "max-autotune",  # autotuned kernels + CUDA graphs
            }[part]
    return None


def _compile(net: nn.Module, variant: str) -> nn.Module:
    """torch.compile in the variant's mode; the `lo` part forces inductor's layout optimization (NHWC
    convolutions inside the compiled graph, see compile_policy.compile_options)."""
    mode = _compile_mode(variant)
    if mode is None:
        return net
    return torch.compile(net, options=compile_options(mode, channels_last="lo" in variant.split("+")))


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def bench_train(system: System, variant: str, args, device: torch.device) -> dict:
    """Workload A: whole optimizer steps of ``system`` in ``variant``, on a device-resident batch of noise."""
    torch.manual_seed(0)
    net = system.network()
    params = count_parameters(net)
    flops = (
        count_train_flops(net.to(device), system.forward, args.batch, device) if device.type == "cuda" else 0
    )
    net = _prepare(net, variant, device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4, fused=device.type == "cuda")
    fwd = _compile(net, variant)
    B = args.batch
    data = torch.randn(B * 8, 3, 32, 32, device=device).clamp(-1, 1)  # GPU-resident "dataset"
    loss_fn = system.train_loss(lambda x, t: system.forward(fwd, x, t), device)
    step = [0]

    def train_step() -> None:
        i = step[0] % 8
        step[0] += 1
        x0 = data[i * B : (i + 1) * B]
        if "cl" in variant.split("+"):
            x0 = x0.contiguous(memory_format=torch.channels_last)
        t = torch.randint(0, 1000, (B,), device=device)
        noise = torch.randn_like(x0)
        with _autocast(device):
            loss = loss_fn(x0, t, noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sec = _time(train_step, args.warmup, args.iters, device)
    out = {
        "workload": "train",
        "system": system.name,
        "variant": variant,
        "batch": B,
        "params": params,
        "img_per_s": round(B / sec, 1),
        "ms_per_step": round(sec * 1e3, 3),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
    }
    if args.profile and device.type == "cuda":
        out["top_kernels"] = top_kernels(train_step, args.profile, device)
    if flops:
        out.update(_flop_rates(flops, sec, device))
    return out


def _flop_rates(flops: int, sec: float, device: torch.device) -> dict:
    tflops = flops / sec / 1e12
    out = {"gflops_per_step": round(flops / 1e9, 1), "achieved_tflops": round(tflops, 1)}
    peak = peak_tflops(device)
    if peak:
        out["fraction_of_bf16_peak"] = round(tflops / peak, 3)
    return out


def bench_sample(system: System, variant: str, args, device: torch.device) -> dict:
    """Workload B: one DDIM batch of ``system`` in ``variant``, timed over ``--sample-iters`` batches."""
    torch.manual_seed(0)
    net = _prepare(system.network(), variant, device).eval()
    fwd = _compile(net, variant)
    n, steps = args.sample_batch, args.sample_steps
    ddim = system.ddim(lambda x, t: system.forward(fwd, x, t), (n, 3, 32, 32), steps, device)

    def run() -> None:
        with torch.no_grad(), _autocast(device):
            ddim()

    sec = _time(run, 1, args.sample_iters, device)
    out = {
        "workload": "sample",
        "system": system.name,
        "variant": variant,
        "batch": n,
        "steps": steps,
        "img_per_s": round(n / sec, 1),
        "seconds_per_batch": round(sec, 3),
    }
    if args.profile and device.type == "cuda":
        out["top_kernels"] = top_kernels(run, 1, device)
    return out


def ours_over_peer(results: list[dict], workloads: list[str]) -> dict:
    """For each peer system in ``results``: {"<workload>_ours_over_<peer>": best ours / best peer} over usable
    variants (not `bound`), and {"<workload>_ours_over_<peer>[<variant>]": best ours / that peer variant} when
    the peer ran several."""

    def usable(workload: str, system: str) -> list[dict]:
        return [
            r
            for r in results
            if r["workload"] == workload
            and r["system"] == system
            and "img_per_s" in r
            and "bound" not in r["variant"].split("+")
        ]

    peer_names = list(dict.fromkeys(r["system"] for r in results if r["system"] != "ours"))
    ratios = {}
    for w in workloads:
        ours = max((r["img_per_s"] for r in usable(w, "ours")), default=math.nan)
        for name in peer_names:
            peers = usable(w, name)
            peer = max((r["img_per_s"] for r in peers), default=math.nan)
            ratios[f"{w}_ours_over_{name}"] = round(ours / peer, 3)
            if len(peers) > 1:
                for r in peers:
                    ratios[f"{w}_ours_over_{name}[{r['variant']}]"] = round(ours / r["img_per_s"], 3)
    return ratios


def model_costs(names: list[str], image_size: int = 32, channels: int = 3) -> list[dict]:
    """Parameters and forward GFLOPs per image of the network presets (counted on the CPU, no GPU needed)."""
    from hydra.utils import instantiate
    from torch.utils.flop_counter import FlopCounterMode

    from .train import compose_config

    rows = []
    for name in names:
        cfg = compose_config([f"model={name}"])
        net = instantiate(
            cfg.model, in_channels=channels, out_channels=channels, image_size=image_size
        ).eval()
        x = torch.randn(1, channels, image_size, image_size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x, torch.zeros(1, dtype=torch.long))
        rows.append(
            {
                "workload": "model_cost",
                "model": name,
                "image": [channels, image_size, image_size],
                "params": count_parameters(net),
                "gflops_forward_per_image": round(counter.get_total_flops() / 1e9, 3),
            }
        )
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--systems",
        default="ours,diffusers",
        help="comma list: ours, and peers defined in benchmarks/bench_peers.py (diffusers)",
    )
    p.add_argument("--workloads", default="train,sample")
    p.add_argument(
        "--variants",
        default="compile-ro+cl+lo",
        help="comma list; parts joined by '+': eager, compile, "
        "compile-ro (CUDA graphs), compile-ma (max-autotune), compile-max (max-autotune + CUDA graphs), "
        "cl (channels_last tensors), lo (inductor's layout optimization forced on: NHWC convolutions in the "
        "compiled graph), fn (our GroupNorm+SiLU as fused Triton kernels on CUDA; no effect on a peer), "
        "bound (GroupNorm and dropout removed: a ceiling, not a usable network; left out of the ratios)",
    )
    p.add_argument(
        "--peer-variants",
        default="compile,compile-ro",
        help="the peers' settings (same parts); the ratios take each peer's best: compile is torch.compile's "
        "default mode, compile-ro adds CUDA graphs",
    )
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--sample-batch", type=int, default=512)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--sample-iters", type=int, default=3)
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        help="profile this many more training steps (sampling: one more batch) and add the GPU kernels with "
        "the most time to each row (top_kernels: name, ms per step or batch, share)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--models",
        default=None,
        help="comma list of conf/model presets (e.g. unet_ddpm_cifar,dit_s,dit_b): print their parameter count "
        "and forward FLOPs at 32x32x3 and exit",
    )
    return p


def _run_one(workload: str, system: System, variant: str, args, device: torch.device) -> dict:
    """One JSON row; a failing variant gives a row with its error rather than losing the others' numbers."""
    fn = bench_train if workload == "train" else bench_sample
    try:
        row = fn(system, variant, args, device)
    except Exception as err:
        row = {"workload": workload, "system": system.name, "variant": variant, "error": repr(err)[:300]}
    row["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    row["torch"] = torch.__version__
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    args = _parser().parse_args(argv)
    if args.models:
        rows = model_costs(args.models.split(","))
        for row in rows:
            print(json.dumps(row), flush=True)
        return rows
    systems = load_systems(args.systems.split(","))
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    results = []
    for workload in args.workloads.split(","):
        for system in systems.values():
            variants = args.variants if system is OURS else args.peer_variants
            for variant in variants.split(","):
                results.append(_run_one(workload, system, variant, args, device))
                print(json.dumps(results[-1]), flush=True)
                torch._dynamo.reset()
    ratios = ours_over_peer(results, args.workloads.split(","))
    print(json.dumps({"ratios": ratios}), flush=True)
    return results


if __name__ == "__main__":
    friendly_errors(main)()
