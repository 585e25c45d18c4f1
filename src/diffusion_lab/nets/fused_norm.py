"""GroupNorm followed by ADM's adaptive scale/shift (AdaGN) and SiLU, as one module with two paths.

``GroupNormSiLU(x, scale, shift) = silu(group_norm(x) * (1 + scale) + shift)``. The PyTorch path runs the
three steps as separate ops (the UNet's math before this module existed, op for op). The Triton path
(``fused_norm_ops``) reads x once for the statistics and once more to write the output, in either NCHW or
channels-last storage, and its backward recomputes the activation instead of storing the normalised tensor.

The module is an ``nn.GroupNorm``, so its parameters and state-dict keys (``weight``, ``bias``) are those of
the plain GroupNorm it replaces, and checkpoints load either way.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.errors import UserError

_UNRESOLVED = object()
_modules = _UNRESOLVED


def _triton_modules():
    """(fused_norm_kernels, fused_norm_ops), or None where triton does not import (the PyTorch path only).
    Imported on first use: registering the op imports torch._inductor (about a second on the CPU), which a
    network that never takes the Triton path has no use for. Kept in a module global rather than behind
    ``functools.cache``: Dynamo does not honour that cache (it warns and traces the import again at every norm
    of a compiled network), while it reads a global as a constant, guarded at the value it read: so the norm
    resolves it before any compiled forward (GroupNormSiLU's __init__ and _apply)."""
    global _modules
    if _modules is _UNRESOLVED:
        _modules = _import_triton_modules()
    return _modules


def _import_triton_modules():
    try:
        from diffusion_lab.nets import fused_norm_kernels, fused_norm_ops
    except ImportError:
        return None
    return fused_norm_kernels, fused_norm_ops


FUSED_NORM_CHOICES = ("auto", "true", "false")


def check_fused_norm(value: object) -> str:
    """The ``model.fused_norm`` option as one of FUSED_NORM_CHOICES (YAML reads true/false as booleans)."""
    if isinstance(value, bool):
        value = str(value).lower()
    if value not in FUSED_NORM_CHOICES:
        raise UserError(f"model.fused_norm={value} is not one of {', '.join(FUSED_NORM_CHOICES)}")
    return value


def auto_takes_triton(x: Tensor) -> bool:
    """``fused_norm=auto``'s choice for x: the Triton path for a CUDA tensor (where triton imports) in a training
    step (gradients on), compiled or not; PyTorch's own kernels wherever gradients are off -- validation, sample
    grids, final samples and ``diffusion_lab.sample``, eager or compiled.

    Why not the kernels there too. Eager: Triton builds a kernel the first time it meets each launch
    specialisation (layer shape and the launch configuration the batch size picks: eight or nine per batch size for
    the Fashion-MNIST UNet), each taking part of a second on a cold cache, for work of a few batches; the first
    validation of a cold run took 18.1 s with the kernels against 2.7 s with ``auto`` (15.3 s with the kernels
    from a warm cache; BENCHMARKS.md, 2026-12-05). Compiled: inductor fuses the forward's norm and activation
    itself, and faster: Ho et al.'s DDIM-50 sampling ran 14% slower with the op in the graph on an H200
    (2026-12-04) and 12% slower on an H100 (425.5 against 483.7 img/s, 2026-12-07; BENCHMARKS.md, Workload B).
    The op pays in the backward, which recomputes the activation instead of storing the normalised tensor.
    """
    if not x.is_cuda or _triton_modules() is None:
        return False
    return torch.is_grad_enabled()


def triton_runs_on(x: Tensor) -> bool:
    """Whether the Triton kernels can take x: a CUDA tensor, or any tensor under Triton's CPU interpreter."""
    modules = _triton_modules()
    if modules is None:
        return False
    return x.is_cuda or modules[0].INTERPRETED


def build_kernels_at_once(step: Callable[[], object], workers: int | None = None) -> float | None:
    """Run ``step`` (a training forward and backward of a network, on the shapes training will use) with the fused
    op's launches turned into builds of their kernels, all submitted at once to a pool of ``workers`` threads
    (Triton's ``AsyncCompileMode``); returns when every kernel is built, with the seconds it took, or None where
    there is nothing to build in parallel (no triton, the CPU interpreter, a triton without AsyncCompileMode).

    Why: launched eagerly the op builds each kernel on first use, one after another, a kernel for every layer
    shape and launch configuration of the step: on one H100 the first captured step of fmnist_fast spent 21.5 s
    of its 23.0-s start there (BENCHMARKS.md, "Cold and warm starts", 2026-12-07). Triton's AsyncCompileMode exists
    to build kernels in parallel threads (ptxas, for one, runs as a process of its own); how much of the 21.5 s it
    saves is for the GPU to measure. The step's values are garbage (the op's outputs are left unwritten): the
    caller discards them.
    A failure of the parallel build is a warning; the kernels are then built on first use, as without it."""
    modules = _triton_modules()
    if modules is None or modules[0].INTERPRETED:
        return None
    import triton

    async_mode = getattr(triton, "AsyncCompileMode", None)
    if async_mode is None:
        return None
    start = time.perf_counter()
    try:
        workers = workers or min(32, os.cpu_count() or 1)
        # Left in reverse: launches stop building, every submitted build is waited for, the pool closes.
        with ThreadPoolExecutor(workers) as pool, async_mode(pool), modules[1].build_only():
            step()
    except Exception as error:  # noqa: BLE001 (any failure leaves the kernels to be built on first use)
        warnings.warn(f"building the fused norm op's kernels at once failed ({error!r}); they are built on "
                      "first use instead", stacklevel=2)  # fmt: skip
        return None
    return time.perf_counter() - start


def kernel_builder(net: nn.Module) -> Callable[[Callable[[], object]], float | None] | None:
    """What builds ``net``'s op kernels before a capture: ``build_kernels_at_once`` where any of its norms may take
    the Triton path (``fused`` auto or true), None where there is nothing to build."""
    if any(isinstance(m, GroupNormSiLU) and m.fused != "false" for m in net.modules()):
        return build_kernels_at_once
    return None


def group_norm_silu_reference(
    x: Tensor, groups: int, weight: Tensor, bias: Tensor, eps: float, scale=None, shift=None
) -> Tensor:
    """The PyTorch path: GroupNorm, then (1 + scale) and + shift broadcast over positions, then SiLU."""
    h = F.group_norm(x, groups, weight, bias, eps)
    if scale is not None:
        h = h * (1 + _per_position(scale, x))
    if shift is not None:
        h = h + _per_position(shift, x)
    return F.silu(h)


def _per_position(v: Tensor, x: Tensor) -> Tensor:
    """(B, C) or (B, C, 1, ...) -> (B, C, 1, ...) broadcasting against x."""
    return v.reshape(*v.shape[:2], *[1] * (x.dim() - 2))


def _per_channel(v: Tensor | None) -> Tensor | None:
    """(B, C) or (B, C, 1, ...) -> (B, C), a view (strides kept: a chunk of a wider projection is fine)."""
    return None if v is None else v.flatten(1)


class GroupNormSiLU(nn.GroupNorm):
    """``forward(x, scale=None, shift=None) = silu(group_norm(x) * (1 + scale) + shift)``.

    ``fused``: ``auto`` takes the Triton path for CUDA tensors when triton imports, in training steps
    (``auto_takes_triton``), ``true`` always (an error where it cannot run), ``false`` never.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-6, fused: object = "auto"):
        super().__init__(num_groups, num_channels, eps=eps)
        self.fused = check_fused_norm(fused)
        if self.fused == "true":
            _triton_modules()  # asked for: resolved now, never inside a compiled forward's first trace (_apply)

    def _apply(self, fn, *args, **kwargs):
        """Moving the norm onto a CUDA device also resolves the Triton modules ``auto`` takes there, before any
        compiled forward. Resolved inside Dynamo's first trace instead, the module global is guarded at its
        unresolved value, so the next call fails that guard and compiles the same graph again (a study job on
        an H100 compiled two graphs of one cache key; ``recompiled`` in the training summary names the guard)."""
        module = super()._apply(fn, *args, **kwargs)
        if self.fused != "false" and self.weight.is_cuda:
            _triton_modules()
        return module

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fused={self.fused}"

    def forward(self, x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
        if self._use_triton(x):
            y, _mean, _rstd = _triton_modules()[1].group_norm_silu(
                x, self.weight, self.bias, _per_channel(scale), _per_channel(shift), self.num_groups, self.eps
            )
            return y
        return group_norm_silu_reference(x, self.num_groups, self.weight, self.bias, self.eps, scale, shift)

    def _use_triton(self, x: Tensor) -> bool:
        if self.fused == "false" or (self.fused == "auto" and not auto_takes_triton(x)):
            return False
        if not triton_runs_on(x):
            why = "triton does not import" if _triton_modules() is None else f"got a {x.device.type} tensor"
            raise UserError(
                f"model.fused_norm=true runs Triton kernels, which need a CUDA tensor ({why}); "
                "choose model.fused_norm=auto or false"
            )
        # Groups too wide for the kernels' registers (none in the shipped UNets) stay on the PyTorch path.
        return self.num_channels // self.num_groups <= _triton_modules()[1].MAX_GROUP_CHANNELS
