"""How many kernels eager inference makes Triton build for the fused GroupNorm+SiLU op, by batch size (no GPU).

In eager mode Triton compiles the op's forward kernel on first use for each specialisation: the launch
configuration's compile-time constants (``fused_norm_ops.launch_config``: channels per group, groups per program,
block sizes, warps, which depend on the batch size) and which integer arguments are divisible by 16 (whether
AdaGN's scale and shift are there is a run-time flag since 2026-12-08, before which it split kernels too). This runs the network's forward on the CPU with the PyTorch path and records, at
each norm layer, the key Triton would compile under, so it counts the kernels a cold cache would build.

``--build N`` then builds the kernels of one training step at the first batch size (each key's forward and
backward kernel, its integer arguments unspecialised, so keys that differ only there build once) for a GPU
target, no GPU needed: first one after another, as the op's first use builds them,
then all at once in a pool of N threads, as ``nets.fused_norm.build_kernels_at_once`` does before a capture, each
time in an empty Triton cache folder. Triton's compiler, from the kernel's source to the GPU binary (ptxas), is
what it times; what it leaves out is the part a GPU adds (loading the binary, the launcher). The pool can only
gain where Triton's compile lets go of Python's lock, which this shows on any machine.

    python benchmarks/fused_norm_specialisations.py [--batches 16,64,128,256]   # unet_small's shape
    python benchmarks/fused_norm_specialisations.py --batches 128 --build 16 [--target cuda:90]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from unet_small import unet_small  # noqa: E402

from diffusion_lab.nets import UNet  # noqa: E402
from diffusion_lab.nets.fused_norm import GroupNormSiLU  # noqa: E402
from diffusion_lab.nets.fused_norm_kernels import RUNTIME_FLAGS  # noqa: E402
from diffusion_lab.nets.fused_norm_ops import launch_config  # noqa: E402

# The dtypes the op's pointers carry in a bf16-autocast training step: activations and AdaGN's projections in
# bf16, the norm's parameters and the statistics in float32.
FLOAT32_POINTERS = ("w_ptr", "b_ptr", "mean_ptr", "rstd_ptr", "dd_ptr", "da_ptr")


def unet_small_eager() -> UNet:
    """The Fashion-MNIST UNet as its config declares it, on the PyTorch path (whose shapes the op would get)."""
    return unet_small(fused_norm="false").eval()


def _key(norm: GroupNormSiLU, x: torch.Tensor) -> tuple:
    """What Triton specialises a launch on: the launch configuration's constants and the integer arguments'
    divisibility by 16 (not AdaGN's flags, run-time values since 2026-12-08)."""
    batch, channels = x.shape[:2]
    hw = x[0, 0].numel()
    gpp, block_c, block_hw, warps = launch_config(batch, channels, hw, norm.num_groups)
    divisible = tuple(v % 16 == 0 for v in (channels, hw, channels * hw))
    return channels // norm.num_groups, gpp, block_c, block_hw, warps, divisible


def specialisations(batches: list[int]) -> dict[int, set]:
    """The keys met at each batch size in one eager forward of unet_small."""
    net = unet_small_eager()
    seen: dict[int, set] = {}
    current = {"batch": 0}

    def record(module, args, kwargs):
        seen.setdefault(current["batch"], set()).add(_key(module, args[0]))

    for module in net.modules():
        if isinstance(module, GroupNormSiLU):
            module.register_forward_pre_hook(record, with_kwargs=True)
    for batch in batches:
        current["batch"] = batch
        with torch.no_grad():
            net(torch.randn(batch, 1, 28, 28), torch.randint(0, 1000, (batch,)))
    return seen


def _source(kernel, key: tuple):
    """Triton's source for ``kernel`` (the op's forward or backward) specialised as ``key`` says."""
    from triton.compiler import ASTSource

    cg, gpp, block_c, block_hw, _warps = key
    constants = {"CG": cg, "GPP": gpp, "BLOCK_C": block_c, "BLOCK_HW": block_hw}
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in RUNTIME_FLAGS:
            signature[name] = "i1"
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in FLOAT32_POINTERS else "*bf16"
        else:
            signature[name] = "fp32" if name == "eps" else "i32"
    return ASTSource(kernel, signature, constants)


def build_seconds(keys: set, workers: int, target: str) -> float:
    """Seconds to build the forward and backward kernel of every key for ``target`` ("cuda:90": backend and
    architecture) in an empty Triton cache folder, in a pool of ``workers`` threads (1: one after another)."""
    import triton
    from triton.backends.compiler import GPUTarget

    from diffusion_lab.nets import fused_norm_kernels as kernels

    backend, arch = target.split(":")
    gpu = GPUTarget(backend, int(arch), 32)
    jobs = [(kernel, key) for key in sorted(keys)
            for kernel in (kernels.group_norm_silu_fwd_kernel, kernels.group_norm_silu_bwd_kernel)]  # fmt: skip

    def build(job) -> None:
        kernel, key = job
        triton.compile(_source(kernel, key), target=gpu, options={"num_warps": key[4]})

    with tempfile.TemporaryDirectory() as cache, mock.patch.dict(os.environ, {"TRITON_CACHE_DIR": cache}):
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(build, jobs))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", default="16,64,128,256", help="comma-separated batch sizes")
    parser.add_argument("--build", type=int, default=0, metavar="N", help="also time the builds, N threads")
    parser.add_argument("--target", default="cuda:90", help="--build's GPU target, backend:architecture")
    opts = parser.parse_args()
    batches = [int(b) for b in opts.batches.split(",")]
    seen = specialisations(batches)
    per_batch = {str(b): len(seen[b]) for b in batches}
    row = {"network": "unet_small", "per_batch": per_batch, "all_batches": len(set().union(*seen.values()))}
    if opts.build:
        keys = {key[:-1] for key in seen[batches[0]]}  # less the divisibility, which the builds leave out
        build_seconds({min(keys)}, 1, opts.target)  # Triton's own first-use setup, outside both timings
        one_by_one = build_seconds(keys, 1, opts.target)
        at_once = build_seconds(keys, opts.build, opts.target)
        row["build"] = {"batch": batches[0], "kernels": 2 * len(keys), "target": opts.target,
                        "one_by_one_s": round(one_by_one, 2), "threads": opts.build, "at_once_s": round(at_once, 2),
                        "cpus": os.cpu_count()}  # fmt: skip
    print(json.dumps(row))


if __name__ == "__main__":
    main()
