"""The fused GroupNorm(+AdaGN)+SiLU (nets/fused_norm.py): its Triton kernels, run on the CPU by Triton's
interpreter, against PyTorch's own nn.GroupNorm and F.silu, forward and every gradient; the UNet with the fused
norm on and off; the ``model.fused_norm`` option's errors."""

from __future__ import annotations

import contextlib
import importlib
import os
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusion_lab.errors import UserError
from diffusion_lab.nets import UNet, fused_norm_kernels, fused_norm_ops
from diffusion_lab.nets import fused_norm as fused_norm_module
from diffusion_lab.nets.fused_norm import GroupNormSiLU, auto_takes_triton

TOL = {"rtol": 1e-5, "atol": 1e-5}


@contextlib.contextmanager
def kernels_interpreted(on: bool):
    """The kernels re-decorated for (or away from) Triton's CPU interpreter, which ``triton.jit`` chooses when
    it decorates; the module's state before is restored after."""
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if on else "0"
    try:
        importlib.reload(fused_norm_kernels)
        yield
    finally:
        if before is None:
            os.environ.pop("TRITON_INTERPRET")
        else:
            os.environ["TRITON_INTERPRET"] = before
        importlib.reload(fused_norm_kernels)


@pytest.fixture
def interpreted():
    with kernels_interpreted(True):
        yield


@pytest.fixture
def packed_launch(monkeypatch):
    """Launch parameters that put several groups in one program and walk the positions in several tiles, so
    that small test inputs reach the code paths the GPU shapes take."""
    monkeypatch.setattr(fused_norm_ops, "MIN_PROGRAMS", 0)
    monkeypatch.setattr(fused_norm_ops, "TILE_ELEMENTS", 128)


def reference(x, gn: nn.GroupNorm, scale, shift):
    """PyTorch's GroupNorm, then AdaGN's (1 + scale) and + shift, then SiLU."""
    h = gn(x)
    if scale is not None:
        h = h * (1 + scale) + shift
    return F.silu(h)


def make_case(shape, groups, layout, adagn, seed=0):
    """Random inputs (mean far from 0), a GroupNorm with random affine parameters, and an output gradient.
    scale and shift are the two halves of one (B, 2C, 1, 1) projection, strided as in ResBlock."""
    torch.manual_seed(seed)
    gn = nn.GroupNorm(groups, shape[1], eps=1e-6)
    with torch.no_grad():
        gn.weight.normal_(1.0, 0.5)
        gn.bias.normal_(0.0, 0.5)
    x = torch.randn(shape) * 2 + 3
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "hw_transposed":  # spatial dims that do not merge into one stride
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    scale = shift = None
    if adagn:
        scale, shift = (0.5 * torch.randn(shape[0], 2 * shape[1], *[1] * (len(shape) - 2))).chunk(2, dim=1)
    return gn, x, scale, shift, torch.randn(shape)


def grads_of(fn, gn, x, scale, shift, dy):
    """fn's output and the gradients of x, weight, bias (and scale, shift) for the output gradient dy."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, scale, shift) if t is not None]
    x_, *ss = leaves
    params = [gn.weight, gn.bias]
    y = fn(x_, *(ss or [None, None]))
    grads = torch.autograd.grad(y, [x_, *params, *ss], dy)
    return y, grads


CASES = [
    # (shape, groups, layout, adagn)
    ((2, 8, 7, 7), 4, "contiguous", False),
    ((2, 8, 7, 7), 4, "channels_last", True),
    ((2, 12, 14, 14), 4, "contiguous", True),  # 3 channels per group: lanes that are not a power of two
    ((2, 12, 14, 14), 4, "channels_last", False),
    ((2, 24, 7, 7), 8, "channels_last", True),
    ((3, 16, 5, 3), 1, "channels_last", True),  # one group: the whole sample
    ((2, 64, 3, 3), 32, "contiguous", True),
    ((2, 8, 6, 5), 2, "hw_transposed", True),
    ((2, 8, 10), 4, "contiguous", True),  # (B, C, L)
]


@pytest.mark.parametrize("launch", ["default", "packed"])
@pytest.mark.parametrize("shape,groups,layout,adagn", CASES)
def test_triton_path_matches_group_norm_then_silu(interpreted, request, launch, shape, groups, layout, adagn):
    """Forward and the gradients of x, weight, bias, scale and shift agree with nn.GroupNorm + F.silu in
    float32; the output and dx keep x's layout (no copy to NCHW)."""
    if launch == "packed":
        request.getfixturevalue("packed_launch")
    gn, x, scale, shift, dy = make_case(shape, groups, layout, adagn)
    fused = GroupNormSiLU(groups, shape[1], fused="true")
    fused.load_state_dict(gn.state_dict())
    y, grads = grads_of(lambda *a: fused(*a), fused, x, scale, shift, dy)
    y_ref, grads_ref = grads_of(lambda *a: reference(a[0], gn, *a[1:]), gn, x, scale, shift, dy)
    torch.testing.assert_close(y, y_ref, **TOL)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, **TOL)
    if layout != "hw_transposed":
        assert y.stride() == x.stride() and grads[0].stride() == x.stride()


def test_packed_launch_takes_several_groups_and_tiles_per_program(packed_launch):
    """The packed launch of the tests above does reach the multi-group, multi-tile code."""
    groups_per_program, block_c, block_hw, _ = fused_norm_ops.launch_config(2, 12, 196, 4)
    assert groups_per_program == 4 and block_c == 16 and block_hw < 196


def test_the_pytorch_path_is_the_unfused_math_exactly():
    """fused=false (and auto on a CPU tensor): the ops the UNet ran before, bit for bit."""
    gn, x, scale, shift, _ = make_case((2, 8, 5, 5), 4, "channels_last", True)
    for fused in ("false", "auto"):
        norm = GroupNormSiLU(4, 8, fused=fused)
        norm.load_state_dict(gn.state_dict())
        assert torch.equal(norm(x, scale, shift), F.silu(gn(x) * (1 + scale) + shift))
        assert torch.equal(norm(x), F.silu(gn(x)))


CUDA_TENSOR = types.SimpleNamespace(is_cuda=True)  # stands for a CUDA tensor: auto reads only its device


def test_auto_takes_the_kernels_in_training_steps_only():
    """fused_norm=auto: the kernels where a training step runs (gradients on), eager or traced into a compiled
    graph; PyTorch's for inference, eager (where Triton would build kernels for every new batch size) and compiled
    (where inductor's own fusion of the forward is faster); never for a CPU tensor."""
    assert auto_takes_triton(CUDA_TENSOR)
    assert not auto_takes_triton(torch.zeros(1))
    torch._dynamo.reset()
    traced = torch.compile(lambda v: v + 1 if auto_takes_triton(CUDA_TENSOR) else v, backend="eager")
    assert traced(torch.zeros(1)).item() == 1  # traced with gradients on: the kernels
    with torch.no_grad():
        assert not auto_takes_triton(CUDA_TENSOR)
        assert traced(torch.zeros(1)).item() == 0  # grad mode is guarded: traced again, PyTorch's path


def test_state_dict_is_a_group_norms():
    """Checkpoints of nn.GroupNorm layers load into GroupNormSiLU strictly, and the other way round."""
    gn, fused = nn.GroupNorm(4, 8, eps=1e-6), GroupNormSiLU(4, 8)
    assert list(fused.state_dict()) == list(gn.state_dict()) == ["weight", "bias"]
    fused.load_state_dict(gn.state_dict(), strict=True)
    gn.load_state_dict(fused.state_dict(), strict=True)


class BuildOnlyKernel:
    """Stands for a Triton kernel: records the builds asked of it (``warmup``: grid, positional arguments and
    keywords) and fails if launched."""

    def __init__(self):
        self.builds = []

    def warmup(self, *args, grid, **kwargs):
        self.builds.append((grid, args, kwargs))

    def __getitem__(self, grid):
        raise AssertionError("launched in build_only")


@pytest.fixture
def build_only_kernels(interpreted, monkeypatch):
    """(forward, backward) BuildOnlyKernels in place of the op's kernels, and a fused norm with its inputs."""
    fwd, bwd = BuildOnlyKernel(), BuildOnlyKernel()
    monkeypatch.setattr(fused_norm_kernels, "group_norm_silu_fwd_kernel", fwd)
    monkeypatch.setattr(fused_norm_kernels, "group_norm_silu_bwd_kernel", bwd)
    gn, x, scale, shift, dy = make_case((2, 8, 5, 5), 4, "channels_last", True)
    norm = GroupNormSiLU(4, 8, fused="true")
    norm.load_state_dict(gn.state_dict())
    return (fwd, bwd), norm, x.requires_grad_(True), scale, shift, dy


def test_in_build_only_the_op_builds_each_kernel_for_its_launch_and_launches_none(build_only_kernels):
    kernels, norm, x, scale, shift, dy = build_only_kernels
    with fused_norm_ops.build_only():
        assert fused_norm_ops._build_only
        out = norm(x, scale, shift)
        torch.autograd.grad(out, [x, norm.weight], dy)
    assert not fused_norm_ops._build_only  # restored on leaving
    gpp, block_c, block_hw, warps = fused_norm_ops.launch_config(2, 8, 25, 4)
    expected = {"HAS_SCALE": True, "HAS_SHIFT": True, "CG": 2, "GPP": gpp, "BLOCK_C": block_c}
    for kernel in kernels:
        ((grid, _args, kwargs),) = kernel.builds
        assert grid == (2, -(-4 // gpp))
        assert {k: kwargs[k] for k in expected} == expected
        assert (kwargs["BLOCK_HW"], kwargs["num_warps"]) == (block_hw, warps)


def test_a_layer_with_adagn_and_one_without_share_their_kernels(build_only_kernels):
    """AdaGN's presence is a run-time flag: the launches with and without scale and shift differ only in the flags'
    values (the same compile-time constants, the same pointer dtypes), and Triton specialises neither flag (the
    integer arguments it does: NCHW loads along the positions vectorise only where HW is known to divide)."""
    kernels, norm, x, scale, shift, dy = build_only_kernels
    x, scale, shift, dy = (t.bfloat16() for t in (x, scale, shift, dy))  # as autocast has them
    with fused_norm_ops.build_only():
        for args in ((scale, shift), ()):
            torch.autograd.grad(norm(x, *args), [x], dy)
    flags = fused_norm_kernels.RUNTIME_FLAGS
    for kernel in kernels:
        (_, with_args, with_kw), (_, without_args, without_kw) = kernel.builds
        dtypes = [[a.dtype for a in args if torch.is_tensor(a)] for args in (with_args, without_args)]
        assert dtypes[0] == dtypes[1] and torch.bfloat16 in dtypes[0]
        constants = [{k: v for k, v in kw.items() if k not in flags} for kw in (with_kw, without_kw)]
        assert constants[0] == constants[1]
        assert [(with_kw[f], without_kw[f]) for f in flags] == [(True, False), (True, False)]
    with kernels_interpreted(False):  # the kernels as Triton compiles them for a GPU
        for name in ("group_norm_silu_fwd_kernel", "group_norm_silu_bwd_kernel"):
            params = {p.name: p for p in getattr(fused_norm_kernels, name).params}
            assert all(not params[f].is_constexpr and params[f].do_not_specialize for f in flags)
            assert not params["HW"].do_not_specialize and not params["C"].do_not_specialize


def test_interpreted_kernels_are_not_built_at_once(interpreted):
    ran = []
    assert fused_norm_module.build_kernels_at_once(lambda: ran.append(1)) is None and not ran


def test_the_kernels_are_built_at_once_in_a_pool_and_a_failure_leaves_them_to_first_use():
    from triton.runtime import _async_compile

    states = []

    def step():  # what the step's launches see: build-only, and Triton's async mode with a pool
        states.append((fused_norm_ops._build_only, _async_compile.active_mode.get() is not None))

    seconds = fused_norm_module.build_kernels_at_once(step, workers=2)
    assert states == [(True, True)] and seconds >= 0
    assert not fused_norm_ops._build_only and _async_compile.active_mode.get() is None

    def broken():
        raise RuntimeError("ptxas fell over")

    with pytest.warns(
        UserWarning, match=r"building the fused norm op's kernels at once failed \(RuntimeError"
    ):
        assert fused_norm_module.build_kernels_at_once(broken) is None
    assert not fused_norm_ops._build_only and _async_compile.active_mode.get() is None


def test_the_fused_op_compiles_without_a_graph_break(interpreted):
    """torch.compile(fullgraph=True) traces a block through GroupNormSiLU (the op's schema, its fake
    propagation and the autograd registration), and the compiled function computes the same values."""
    gn, x, scale, shift, dy = make_case((2, 8, 5, 5), 4, "channels_last", True)
    fused = GroupNormSiLU(4, 8, fused="true")
    fused.load_state_dict(gn.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: fused(*a) * 2, fullgraph=True, backend="eager")
    y, grads = grads_of(compiled, fused, x, scale, shift, dy)
    y_ref, grads_ref = grads_of(lambda *a: reference(a[0], gn, *a[1:]) * 2, gn, x, scale, shift, dy)
    torch.testing.assert_close(y, y_ref, **TOL)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, **TOL)


def test_tracing_the_op_warns_of_no_cache_that_dynamo_ignores(interpreted):
    """The norm finds its Triton modules through a global that Dynamo reads as a constant: no warning that a
    cached function is traced through (which a functools.cache lookup gave at every compiled run's start)."""
    fused = GroupNormSiLU(4, 8, fused="true")
    x = torch.randn(2, 8, 5, 5)
    torch._dynamo.reset()
    torch._dynamo.utils.warn_once_cache.clear()  # Dynamo warns once per message and process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.compile(fused, fullgraph=True, backend="eager")(x)
    assert [str(w.message) for w in caught if "cache" in str(w.message)] == []


def _calls_compiled_three_times(norm: GroupNormSiLU) -> dict:
    from diffusion_lab.compile_policy import compile_stats

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # the graph count is the process's: this compile's alone
    compiled = torch.compile(norm, backend="eager")
    for _ in range(3):
        compiled(torch.randn(2, 8, 3, 3))
    stats = compile_stats()
    torch._dynamo.reset()
    return stats


def test_a_norm_that_takes_the_kernels_is_compiled_once_however_many_calls(interpreted, monkeypatch):
    """The Triton modules are resolved when the norm is built to take them (fused=true; auto on moving to
    CUDA), so the first trace reads the module global resolved and the guard on it holds at every later call."""
    monkeypatch.setattr(fused_norm_module, "_modules", fused_norm_module._UNRESOLVED)
    norm = GroupNormSiLU(4, 8, fused="true")
    assert fused_norm_module._modules is not fused_norm_module._UNRESOLVED
    stats = _calls_compiled_three_times(norm)
    assert stats["graphs"] == 1 and "recompiles" not in stats, stats
    # Resolved inside the first trace instead: a guard on the unresolved global fails at the second call.
    monkeypatch.setattr(fused_norm_module, "_modules", fused_norm_module._UNRESOLVED)
    stats = _calls_compiled_three_times(norm)
    assert stats["graphs"] == 2, stats
    assert "_modules" in stats["recompiles"][0] and "_triton_modules" in stats["recompiles"][0], stats


def test_auto_leaves_the_kernels_unimported_on_the_cpu(monkeypatch):
    monkeypatch.setattr(fused_norm_module, "_modules", fused_norm_module._UNRESOLVED)
    norm = GroupNormSiLU(4, 8).to(torch.float64)  # built and moved (_apply) on the CPU: PyTorch's path only
    norm(torch.randn(2, 8, 3, 3, dtype=torch.float64))
    assert fused_norm_module._modules is fused_norm_module._UNRESOLVED


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_resolves_the_kernels_when_moved_onto_cuda(monkeypatch):
    monkeypatch.setattr(fused_norm_module, "_modules", fused_norm_module._UNRESOLVED)
    GroupNormSiLU(4, 8).cuda()
    assert fused_norm_module._modules is not fused_norm_module._UNRESOLVED


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_the_gpu_the_kernels_built_at_once_are_the_ones_a_step_then_launches(monkeypatch):
    """Triton's AsyncCompileMode and warmup on a real GPU: the builder returns a time and builds every kernel of a
    UNet training step, so the real step after it builds none, and computes what PyTorch's path does (float32,
    TF32 off: the two networks differ in their norms alone)."""
    import triton

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    nets = {f: UNet(**TINY_UNET, use_scale_shift_norm=True, fused_norm=f).cuda() for f in ("false", "true")}
    nudge_weights(nets["false"])
    nets["true"].load_state_dict(nets["false"].state_dict())
    x = torch.randn(4, 2, 8, 8, device="cuda").contiguous(memory_format=torch.channels_last)
    t, y = torch.tensor([3, 700, 5, 9], device="cuda"), torch.tensor([0, 2, 1, 0], device="cuda")

    def step(net):
        out = net(x, t, y)
        return out, torch.autograd.grad(out.square().mean(), list(net.parameters()))

    assert fused_norm_module.build_kernels_at_once(lambda: step(nets["true"]), workers=4) >= 0
    built = []  # Triton calls this hook after each kernel it builds (not on a cache hit)
    monkeypatch.setattr(triton.knobs.runtime, "jit_post_compile_hook", lambda *a, **k: built.append(1))
    out, grads = step(nets["true"])
    assert built == []  # every kernel the step launched was built by the builder
    nets["true"](torch.randn(1, 2, 16, 16, device="cuda"), t[:1], y[:1])
    assert built  # while a launch of another shape builds, and the hook sees it
    ref, ref_grads = step(nets["false"])
    torch.testing.assert_close(out, ref, **TOL)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, **TOL)


TINY_UNET = dict(
    in_channels=2, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
    image_size=8, dropout=0.0, groups=4, num_classes=3,
)  # fmt: skip


def nudge_weights(net: nn.Module) -> None:
    """Wake the zero-initialised layers: with conv_out at zero the output is zero and no gradient flows."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("use_scale_shift_norm", [True, False])
def test_unet_gives_the_same_output_and_gradients_with_fused_norm_on_and_off(
    interpreted, use_scale_shift_norm
):
    """One state dict, fused_norm=false vs true: every norm-SiLU pair of the UNet (ResBlock's two, the output's)
    on the Triton path gives the same output and parameter gradients, channels-last as in GPU training."""
    torch.manual_seed(0)
    nets = {
        f: UNet(**TINY_UNET, use_scale_shift_norm=use_scale_shift_norm, fused_norm=f)
        for f in ("false", "true")
    }
    nudge_weights(nets["false"])
    nets["true"].load_state_dict(nets["false"].state_dict(), strict=True)
    x = torch.randn(2, 2, 8, 8).contiguous(memory_format=torch.channels_last)
    t, y = torch.tensor([3, 700]), torch.tensor([0, 2])
    results = {}
    for name, net in nets.items():
        net = net.to(memory_format=torch.channels_last)
        out = net(x, t, y)
        out.square().mean().backward()
        results[name] = (out, {n: p.grad for n, p in net.named_parameters()})
    torch.testing.assert_close(results["true"][0], results["false"][0], **TOL)
    grads_on, grads_off = results["true"][1], results["false"][1]
    assert grads_on.keys() == grads_off.keys()
    for name in grads_off:
        torch.testing.assert_close(grads_on[name], grads_off[name], **TOL, msg=name)


def test_the_unet_with_fused_norm_compiles_as_one_graph(interpreted, monkeypatch):
    """torch.compile(fullgraph=True) of the whole UNet on the Triton path: no graph break at any norm, the
    compiled network computes what the eager PyTorch-path network does, and a second call (a second training
    step) reuses the graph: nothing the first trace resolved is guarded at an earlier value."""
    from diffusion_lab.compile_policy import compile_stats

    monkeypatch.setattr(fused_norm_module, "_modules", fused_norm_module._UNRESOLVED)  # as in a new process
    torch.manual_seed(0)
    nets = {f: UNet(**TINY_UNET, use_scale_shift_norm=True, fused_norm=f) for f in ("false", "true")}
    nudge_weights(nets["false"])
    nets["true"].load_state_dict(nets["false"].state_dict())
    x, t, y = torch.randn(2, 2, 8, 8), torch.tensor([3, 700]), torch.tensor([0, 2])
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(nets["true"], fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, t, y), nets["false"](x, t, y), **TOL)
    compiled(x, t, y)
    stats = compile_stats()
    torch._dynamo.reset()
    assert stats["graphs"] == 1 and "recompiles" not in stats, stats


def test_fused_norm_true_on_a_cpu_tensor_is_one_error_line():
    with kernels_interpreted(False):
        norm = UNet(**TINY_UNET, fused_norm=True).norm_out
        with pytest.raises(UserError) as err:
            norm(torch.randn(1, 8, 4, 4))
    assert str(err.value) == (
        "model.fused_norm=true runs Triton kernels, which need a CUDA tensor (got a cpu tensor); "
        "choose model.fused_norm=auto or false"
    )


def test_a_fused_norm_value_outside_the_choices_is_one_error_line():
    with pytest.raises(UserError) as err:
        UNet(**TINY_UNET, fused_norm="yes")
    assert str(err.value) == "model.fused_norm=yes is not one of auto, true, false"
    assert UNet(**TINY_UNET, fused_norm=False).config.fused_norm == "false"  # YAML's false is a boolean


@pytest.mark.parametrize(
    ("fused", "mode", "cuda", "warned"),
    [
        ("true", "default", True, True),
        ("auto", "max-autotune-no-cudagraphs", True, True),
        ("auto", "reduce-overhead", True, False),  # CUDA graphs: the op is the faster path
        ("true", "max-autotune", True, False),  # which also replays CUDA graphs
        ("false", "default", True, False),
        ("auto", "default", False, False),  # auto on a CPU run takes PyTorch's path
    ],
)
def test_fused_norm_without_cuda_graphs_is_warned_about(fused, mode, cuda, warned):
    from diffusion_lab.compile_policy import fused_norm_warning

    warning = fused_norm_warning(UNet(**TINY_UNET, fused_norm=fused), mode, cuda)
    if not warned:
        assert warning is None
        return
    assert warning == (
        f"model.fused_norm={fused} with compile={mode}: the fused GroupNorm+SiLU op is slower than PyTorch's "
        "without CUDA graphs (1.77x the step on the Ho et al. network); use compile=reduce-overhead or "
        "model.fused_norm=false"
    )


# A child process: the fused op's block compiled by inductor (the kernels under Triton's interpreter), one
# training step; prints how its graphs met the two on-disk caches.
CACHE_PROBE = """
import json, torch
from torch._dynamo.utils import counters
from diffusion_lab.compile_policy import cache_outcomes
from diffusion_lab.nets.fused_norm import GroupNormSiLU
torch.manual_seed(0)
block = GroupNormSiLU(4, 16, fused="true")
x = torch.randn(2, 16, 8, 8, requires_grad=True)
block(x).sum().backward()  # an eager call first, as the compile-phases probe makes
torch.compile(block, fullgraph=True)(x).sum().backward()
print(json.dumps(cache_outcomes(counters)))
"""


@pytest.mark.slow
def test_the_fused_ops_compiled_graph_is_read_back_from_the_cache_by_a_new_process(tmp_path):
    """The op's triton_op graph is one AOTAutograd can cache: a second process with the same cache folder loads
    it (a key that changed between processes, or a bypass, would make every warm start trace it again)."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    runs = [
        subprocess.run(
            [sys.executable, "-c", CACHE_PROBE], env=env, capture_output=True, text=True, check=True
        )
        for _ in range(2)
    ]
    cold, warm = (json.loads(run.stdout.strip().splitlines()[-1]) for run in runs)
    assert (cold["aot_cache_miss"], cold["fx_cache_miss"], cold["aot_cache_hit"]) == (1, 2, 0)
    assert (warm["aot_cache_hit"], warm["aot_cache_miss"], warm["aot_cache_bypass"]) == (1, 0, 0)
    assert (warm["fx_cache_hit"], warm["fx_cache_miss"]) == (2, 0)
