"""How many kernels eager inference makes Triton build for the fused GroupNorm+SiLU op, by batch size (no GPU).

In eager mode Triton compiles the op's forward kernel on first use for each specialisation: the launch
configuration's compile-time constants (``fused_norm_ops.launch_config``: channels per group, groups per program,
block sizes, warps, which depend on the batch size), whether AdaGN's scale and shift are there, and which integer
arguments are divisible by 16. This runs the network's forward on the CPU with the PyTorch path and records, at
each norm layer, the key Triton would compile under, so it counts the kernels a cold cache would build.

    python benchmarks/fused_norm_specialisations.py [--batches 16,64,128,256]   # unet_small's shape
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from unet_small import unet_small  # noqa: E402

from diffusion_lab.nets import UNet  # noqa: E402
from diffusion_lab.nets.fused_norm import GroupNormSiLU  # noqa: E402
from diffusion_lab.nets.fused_norm_ops import launch_config  # noqa: E402


def unet_small_eager() -> UNet:
    """The Fashion-MNIST UNet as its config declares it, on the PyTorch path (whose shapes the op would get)."""
    return unet_small(fused_norm="false").eval()


def _key(norm: GroupNormSiLU, x: torch.Tensor, scale, shift) -> tuple:
    batch, channels = x.shape[:2]
    hw = x[0, 0].numel()
    gpp, block_c, block_hw, warps = launch_config(batch, channels, hw, norm.num_groups)
    divisible = tuple(v % 16 == 0 for v in (channels, hw, channels * hw))
    return (
        channels // norm.num_groups,
        gpp,
        block_c,
        block_hw,
        warps,
        scale is not None,
        shift is not None,
        divisible,
    )


def specialisations(batches: list[int]) -> dict[int, set]:
    """The keys met at each batch size in one eager forward of unet_small."""
    net = unet_small_eager()
    seen: dict[int, set] = {}
    current = {"batch": 0}

    def record(module, args, kwargs):
        scale = kwargs.get("scale", args[1] if len(args) > 1 else None)
        shift = kwargs.get("shift", args[2] if len(args) > 2 else None)
        seen.setdefault(current["batch"], set()).add(_key(module, args[0], scale, shift))

    for module in net.modules():
        if isinstance(module, GroupNormSiLU):
            module.register_forward_pre_hook(record, with_kwargs=True)
    for batch in batches:
        current["batch"] = batch
        with torch.no_grad():
            net(torch.randn(batch, 1, 28, 28), torch.randint(0, 1000, (batch,)))
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", default="16,64,128,256", help="comma-separated batch sizes")
    batches = [int(b) for b in parser.parse_args().batches.split(",")]
    seen = specialisations(batches)
    per_batch = {str(b): len(seen[b]) for b in batches}
    print(
        json.dumps(
            {"network": "unet_small", "per_batch": per_batch, "all_batches": len(set().union(*seen.values()))}
        )
    )


if __name__ == "__main__":
    main()
