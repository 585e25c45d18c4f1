"""The fused GroupNorm + AdaGN + SiLU as a PyTorch operator: ``torch.ops.diffusion_lab.group_norm_silu``.

Registered with ``torch.library.triton_op`` and launched through ``wrap_triton`` rather than as an opaque
``custom_op``: torch.compile keeps either as one node of the graph (no graph break), but a ``triton_op``'s body
(allocations, launch arithmetic, the kernel launches) is traced into the graph, so Inductor compiles the
kernels into its own generated code (its launcher, no Python op dispatch per call; AOTInductor can package
them) and knows which buffers they read and write. The backward is another ``triton_op``, tied to the forward
by ``register_autograd``.

Importing this module needs triton; ``fused_norm.py`` falls back to PyTorch when it cannot.
"""

import contextlib
import math
from typing import Optional

import torch
import triton
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton

from diffusion_lab.nets import fused_norm_kernels as kernels

# Launch shape (see fused_norm_kernels): lanes aimed at per program (several groups side by side), elements
# per tile, and the program count below which a program takes fewer groups so that the GPU fills.
TARGET_LANES = 64
TILE_ELEMENTS = 4096
MIN_PROGRAMS = 1024
# Above this many channels in one group a tile row no longer fits the registers: fused_norm.py keeps such
# layers on the PyTorch path.
MAX_GROUP_CHANNELS = 4096


def launch_config(batch: int, channels: int, hw: int, groups: int) -> tuple[int, int, int, int]:
    """(groups per program, BLOCK_C, BLOCK_HW, num_warps) for a (batch, channels, hw) input."""
    cg = channels // groups
    # Groups per program: a power of two that makes each program's run of channels a multiple of 8 (16 bytes
    # of bf16, one vector load), as many as TARGET_LANES allows, fewer while that leaves the GPU underfilled.
    step = 8 // math.gcd(cg, 8)
    gpp = step * _floor_power_of_2(TARGET_LANES // (cg * step))
    while gpp > step and batch * triton.cdiv(groups, gpp) < MIN_PROGRAMS:
        gpp //= 2
    gpp = min(gpp, groups)
    block_c = triton.next_power_of_2(gpp * cg)
    block_hw = min(triton.next_power_of_2(hw), max(1, TILE_ELEMENTS // block_c))
    num_warps = 8 if block_c * block_hw >= 4096 else 4
    return gpp, block_c, block_hw, num_warps


def _floor_power_of_2(k: int) -> int:
    """The largest power of two <= k, and 1 for k < 1."""
    return max(1, triton.next_power_of_2(k + 1) // 2)


def _spatial_mergeable(t: Tensor) -> bool:
    """Whether the spatial dims of (B, C, *spatial) walk memory with one stride (NCHW, NHWC: yes)."""
    dims = [(size, stride) for size, stride in zip(t.shape[2:], t.stride()[2:]) if size != 1]
    return all(outer[1] == inner[0] * inner[1] for outer, inner in zip(dims, dims[1:]))


def _as_bcl(t: Tensor) -> Tensor:
    """(B, C, *spatial) -> (B, C, L) as a view of t's storage (a copy where the spatial dims don't merge)."""
    return t.flatten(2) if t.dim() > 2 else t.unsqueeze(-1)


def _addressable(x: Tensor) -> Tensor:
    """x, or a contiguous copy where its spatial dims do not merge into one stride: outputs laid out like x are
    then written through a (B, C, L) view."""
    return x if _spatial_mergeable(x) else x.contiguous()


def _strides(t: Tensor | None) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0, 0)


def _or_stand_in(v: Tensor | None, x: Tensor) -> Tensor:
    """AdaGN's scale or shift, or where absent a tensor of x's dtype the kernel never reads (its flag is off):
    a pointer of the type that scale and shift have in training (autocast gives the projection x's dtype), so a
    layer with AdaGN and one without share a kernel (HAS_SCALE and HAS_SHIFT are run-time flags)."""
    return x if v is None else v


# While set (``build_only``), a launch only builds its kernel for the arguments it was given (Triton's warmup).
_build_only = False


@contextlib.contextmanager
def build_only():
    """Within: the op's launches build their kernels and launch nothing, so its outputs are left unwritten (their
    shapes are right). Run a step under it with Triton's ``AsyncCompileMode`` and every kernel the step needs is
    built at once in a thread pool (``fused_norm.build_kernels_at_once``) instead of one after another."""
    global _build_only
    before, _build_only = _build_only, True
    try:
        yield
    finally:
        _build_only = before


def _launch(kernel, grid: tuple[int, int], *args, **kwargs) -> None:
    """``wrap_triton(kernel)[grid](*args, **kwargs)``, except under Triton's CPU interpreter on the data-less
    tensors torch.compile traces with: an interpreted kernel is plain Python that would read their memory,
    and tracing only needs the outputs' shapes (the traced graph runs this op again on real tensors); and in
    ``build_only``, where the kernel is built for these arguments and not launched."""
    if kernels.INTERPRETED and any(is_fake(a) for a in args if isinstance(a, Tensor)):
        return
    if _build_only:
        kernel.warmup(*args, grid=grid, **kwargs)
        return
    wrap_triton(kernel)[grid](*args, **kwargs)


@triton_op("diffusion_lab::group_norm_silu", mutates_args=())
def group_norm_silu(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    scale: Optional[Tensor],  # noqa: UP045 (torch.library reads the annotation at runtime)
    shift: Optional[Tensor],  # noqa: UP045
    groups: int,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``silu(group_norm(x) * (1 + scale) + shift)`` and the per (sample, group) mean and 1/std (float32).
    ``scale`` and ``shift`` are (B, C) or None."""
    x = _addressable(x)
    batch, channels = x.shape[:2]
    y = torch.empty_like(x)
    mean = torch.empty(batch, groups, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    x3, y3 = _as_bcl(x), _as_bcl(y)
    hw = x3.shape[2]
    if x.numel() == 0:
        return y, mean, rstd
    gpp, block_c, block_hw, num_warps = launch_config(batch, channels, hw, groups)
    _launch(
        kernels.group_norm_silu_fwd_kernel, (batch, triton.cdiv(groups, gpp)),
        x3, y3, weight, bias, _or_stand_in(scale, x3), _or_stand_in(shift, x3),
        mean, rstd, channels, hw, groups, eps,
        *x3.stride(), *y3.stride(), *_strides(scale), *_strides(shift),
        HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        CG=channels // groups, GPP=gpp, BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=num_warps,
    )  # fmt: skip
    return y, mean, rstd


@triton_op("diffusion_lab::group_norm_silu_backward", mutates_args=())
def group_norm_silu_backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    scale: Optional[Tensor],  # noqa: UP045
    shift: Optional[Tensor],  # noqa: UP045
    mean: Tensor,
    rstd: Tensor,
    groups: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """dx, and float32 (B, C) sums over positions of dz and dz * xhat (dz: the gradient at the SiLU input)."""
    x = _addressable(x)
    batch, channels = x.shape[:2]
    dx = torch.empty_like(x)
    dd = torch.empty(batch, channels, device=x.device, dtype=torch.float32)
    da = torch.empty_like(dd)
    x3, dy3, dx3 = _as_bcl(x), _as_bcl(dy), _as_bcl(dx)
    hw = x3.shape[2]
    if x.numel() == 0:
        return dx, dd, da
    gpp, block_c, block_hw, num_warps = launch_config(batch, channels, hw, groups)
    _launch(
        kernels.group_norm_silu_bwd_kernel, (batch, triton.cdiv(groups, gpp)),
        x3, dy3, dx3, weight, bias, _or_stand_in(scale, x3), _or_stand_in(shift, x3),
        mean, rstd, dd, da, channels, hw, groups,
        *x3.stride(), *dy3.stride(), *dx3.stride(), *_strides(scale), *_strides(shift),
        HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        CG=channels // groups, GPP=gpp, BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=num_warps,
    )  # fmt: skip
    return dx, dd, da


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, scale, shift, groups, _eps = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
    ctx.groups = groups
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
    dx, dd, da = group_norm_silu_backward(dy, x, weight, bias, scale, shift, mean, rstd, ctx.groups)
    dweight, dbias, dscale, dshift = _parameter_grads(dd, da, weight, bias, scale, shift)
    return dx, dweight, dbias, dscale, dshift, None, None


def _parameter_grads(dd: Tensor, da: Tensor, weight: Tensor, bias: Tensor, scale, shift):
    """From z = xhat * weight * (1 + scale) + bias * (1 + scale) + shift, given dd = sum dz, da = sum dz xhat,
    each (B, C): the gradients of weight, bias (C,) and of scale, shift (B, C)."""
    if scale is None:
        dweight, dbias, dscale = da.sum(0), dd.sum(0), None
    else:
        one_plus_s = 1.0 + scale.float()
        dweight, dbias = (da * one_plus_s).sum(0), (dd * one_plus_s).sum(0)
        dscale = (da * weight.float() + dd * bias.float()).to(scale.dtype)
    dshift = None if shift is None else dd.to(shift.dtype)
    return dweight.to(weight.dtype), dbias.to(bias.dtype), dscale, dshift


group_norm_silu.register_autograd(_backward, setup_context=_setup_context)
