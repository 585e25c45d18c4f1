"""Triton kernels of the fused GroupNorm (+ AdaGN scale/shift) + SiLU: ``silu(gn(x) * (1 + scale) + shift)``.

Kernels only; ``fused_norm_ops.py`` launches them. They live apart so that tests can reload this module under
``TRITON_INTERPRET=1`` (``triton.jit`` picks the interpreter when the function is decorated, not when it runs).
For that the kernels call only ``triton.language`` builtins and this module's own jit functions: ``tl.sum`` and
``tl.sigmoid`` (and ``tl.zeros``) are jit functions of triton's, decorated once when triton was imported, so
``_sum``, ``_sigmoid`` and ``tl.full`` stand in for them (the same code).

One program owns one sample and a run of whole groups (``GPP`` groups of ``CG`` channels, ``BLOCK_C`` lanes) and
walks the ``HW`` positions in tiles of ``BLOCK_HW`` twice: once to reduce, once to write. Owning whole groups
keeps every reduction inside the program (no second launch, no atomics); owning several groups side by side
makes each tile row ``GPP * CG`` neighbouring channels, one contiguous run in channels-last memory. The second
walk re-reads what the first just read, mostly from L2. Addresses come from (sample, channel, position)
strides, so NCHW and NHWC tensors need no layout copy. All arithmetic is float32.

With ``a = weight * (1 + scale)`` and ``d = bias * (1 + scale) + shift`` per (sample, channel), the output is
``silu(z)`` with ``z = xhat * a + d`` and ``xhat = (x - mean) * rstd``, i.e. ``z = x * A + D`` for
``A = rstd * a`` and ``D = d - mean * A``: one multiply-add per element.
"""

import triton
import triton.language as tl

# Whether the kernels below were decorated for Triton's CPU interpreter (then they accept CPU tensors).
INTERPRETED = bool(triton.knobs.runtime.interpret)
# The launch's flags that stay run-time values (booleans, never specialised into a kernel of their own), so fewer
# kernels are built on a cold start. The integer arguments stay specialised (Triton's divisibility by 16): in NCHW
# memory the loads along the positions vectorise only where HW is known to divide, and along a channels-last row
# only where the channel count and strides are.
RUNTIME_FLAGS = ("HAS_SCALE", "HAS_SHIFT")


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sum(v, axis: tl.constexpr):
    return tl.reduce(v, axis, _add)


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _group_sum(v, same_group, GPP: tl.constexpr):
    """Each lane's sum of ``v`` over the lanes of its group (lanes outside every group must hold 0)."""
    if GPP == 1:
        total = v * 0.0 + _sum(v, 0)
    else:
        total = _sum(tl.where(same_group, v[None, :], 0.0), 1)
    return total


@triton.jit
def _adagn_coefficients(
    w_ptr, b_ptr, scale_ptr, shift_ptr, n, c, c_mask,
    ss_b, ss_c, st_b, st_c, HAS_SCALE, HAS_SHIFT,
):  # fmt: skip
    """Per-lane ``(a, d)`` of ``z = xhat * a + d``: the GroupNorm affine folded with AdaGN's scale and shift.
    HAS_SCALE and HAS_SHIFT are run-time flags, not compile-time constants: a branch taken once per program,
    and one kernel for a layer shape with AdaGN and without (fewer kernels to build on a cold start)."""
    a = tl.load(w_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    d = tl.load(b_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        one_plus_s = 1.0 + tl.load(scale_ptr + n * ss_b + c * ss_c, mask=c_mask, other=0.0).to(tl.float32)
        a = a * one_plus_s
        d = d * one_plus_s
    if HAS_SHIFT:
        d = d + tl.load(shift_ptr + n * st_b + c * st_c, mask=c_mask, other=0.0).to(tl.float32)
    return a, d


@triton.jit
def _silu_grad(z, dy):
    """d silu(z) / dz times the incoming gradient: sig * (1 + z * (1 - sig))."""
    sig = _sigmoid(z)
    return dy * sig * (1.0 + z * (1.0 - sig))


@triton.jit
def _lanes(C, CG: tl.constexpr, GPP: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's channels: lane -> (group within the program, channel, valid?) and the same-group mask.
    CG and GPP are compile-time constants so that the compiler sees the first channel's alignment and the
    mask's runs: that is what lets it load a channels-last row in 16-byte vectors."""
    lane = tl.arange(0, BLOCK_C)
    g_lane = lane // CG
    g0 = tl.program_id(1) * GPP
    c = g0 * CG + lane
    c_mask = (lane < GPP * CG) & (c < C)
    same_group = g_lane[:, None] == g_lane[None, :]
    return lane, g_lane, g0, c, c_mask, same_group


@triton.jit(do_not_specialize=RUNTIME_FLAGS)
def group_norm_silu_fwd_kernel(
    x_ptr, y_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, rstd_ptr,
    C, HW, G, eps,
    sx_b, sx_c, sx_hw, sy_b, sy_c, sy_hw, ss_b, ss_c, st_b, st_c,
    HAS_SCALE, HAS_SHIFT,
    CG: tl.constexpr, GPP: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0)
    lane, g_lane, g0, c, c_mask, same_group = _lanes(C, CG, GPP, BLOCK_C)
    x_n = x_ptr + n.to(tl.int64) * sx_b
    y_n = y_ptr + n.to(tl.int64) * sy_b
    hw_lane = tl.arange(0, BLOCK_HW)

    # Sums of x - pivot with each channel's first value as pivot: E[x^2] - E[x]^2 without the cancellation
    # that a large mean would cause in float32.
    pivot = tl.load(x_n + c * sx_c, mask=c_mask, other=0.0).to(tl.float32)
    acc_s = tl.full([BLOCK_HW, BLOCK_C], 0.0, tl.float32)
    acc_q = tl.full([BLOCK_HW, BLOCK_C], 0.0, tl.float32)
    for hw0 in range(0, HW, BLOCK_HW):
        hw = hw0 + hw_lane
        m = (hw < HW)[:, None] & c_mask[None, :]
        v = tl.load(x_n + hw[:, None] * sx_hw + c[None, :] * sx_c, mask=m, other=0.0).to(tl.float32)
        dv = tl.where(m, v - pivot[None, :], 0.0)
        acc_s += dv
        acc_q += dv * dv
    s = _sum(acc_s, 0)
    q = _sum(acc_q, 0)
    # Per channel mean and squared deviations, then the group's by Chan et al.'s pairwise combination.
    mean_c = tl.where(c_mask, pivot + s / HW, 0.0)
    m2_c = tl.where(c_mask, q - s * s / HW, 0.0)
    mean = _group_sum(mean_c, same_group, GPP) / CG
    dev = tl.where(c_mask, mean_c - mean, 0.0)
    m2 = _group_sum(m2_c + HW * dev * dev, same_group, GPP)
    rstd = 1.0 / tl.sqrt(tl.maximum(m2, 0.0) / (CG * HW) + eps)

    first_of_group = c_mask & (lane == g_lane * CG)
    tl.store(mean_ptr + n * G + g0 + g_lane, mean, mask=first_of_group)
    tl.store(rstd_ptr + n * G + g0 + g_lane, rstd, mask=first_of_group)

    a, d = _adagn_coefficients(
        w_ptr, b_ptr, scale_ptr, shift_ptr, n, c, c_mask, ss_b, ss_c, st_b, st_c, HAS_SCALE, HAS_SHIFT
    )
    A = rstd * a
    D = d - mean * A
    for hw0 in range(0, HW, BLOCK_HW):
        hw = hw0 + hw_lane
        m = (hw < HW)[:, None] & c_mask[None, :]
        v = tl.load(x_n + hw[:, None] * sx_hw + c[None, :] * sx_c, mask=m, other=0.0).to(tl.float32)
        z = v * A[None, :] + D[None, :]
        out = z * _sigmoid(z)
        tl.store(y_n + hw[:, None] * sy_hw + c[None, :] * sy_c, out.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=RUNTIME_FLAGS)
def group_norm_silu_bwd_kernel(
    x_ptr, dy_ptr, dx_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, rstd_ptr, dd_ptr, da_ptr,
    C, HW, G,
    sx_b, sx_c, sx_hw, sdy_b, sdy_c, sdy_hw, sdx_b, sdx_c, sdx_hw, ss_b, ss_c, st_b, st_c,
    HAS_SCALE, HAS_SHIFT,
    CG: tl.constexpr, GPP: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    """dx, and per (sample, channel) dd = sum_hw dz and da = sum_hw dz * xhat, from which the caller forms
    the weight, bias, scale and shift gradients (dz: the gradient at z, the SiLU input)."""
    n = tl.program_id(0)
    lane, g_lane, g0, c, c_mask, same_group = _lanes(C, CG, GPP, BLOCK_C)
    x_n = x_ptr + n.to(tl.int64) * sx_b
    dy_n = dy_ptr + n.to(tl.int64) * sdy_b
    dx_n = dx_ptr + n.to(tl.int64) * sdx_b
    hw_lane = tl.arange(0, BLOCK_HW)

    mean = tl.load(mean_ptr + n * G + g0 + g_lane, mask=c_mask, other=0.0)
    rstd = tl.load(rstd_ptr + n * G + g0 + g_lane, mask=c_mask, other=0.0)
    a, d = _adagn_coefficients(
        w_ptr, b_ptr, scale_ptr, shift_ptr, n, c, c_mask, ss_b, ss_c, st_b, st_c, HAS_SCALE, HAS_SHIFT
    )
    A = rstd * a
    D = d - mean * A

    acc_dd = tl.full([BLOCK_HW, BLOCK_C], 0.0, tl.float32)
    acc_da = tl.full([BLOCK_HW, BLOCK_C], 0.0, tl.float32)
    for hw0 in range(0, HW, BLOCK_HW):
        hw = hw0 + hw_lane
        m = (hw < HW)[:, None] & c_mask[None, :]
        v = tl.load(x_n + hw[:, None] * sx_hw + c[None, :] * sx_c, mask=m, other=0.0).to(tl.float32)
        g = tl.load(dy_n + hw[:, None] * sdy_hw + c[None, :] * sdy_c, mask=m, other=0.0).to(tl.float32)
        dz = _silu_grad(v * A[None, :] + D[None, :], g)  # 0 where masked, as g is
        acc_dd += dz
        acc_da += dz * (v - mean[None, :])
    dd = _sum(acc_dd, 0)
    da = _sum(acc_da, 0) * rstd
    tl.store(dd_ptr + n * C + c, dd, mask=c_mask)
    tl.store(da_ptr + n * C + c, da, mask=c_mask)

    # dx = rstd * (dxhat - mean_g(dxhat) - xhat * mean_g(dxhat * xhat)) with dxhat = dz * a, as x * P + ...
    count = CG * HW
    m0 = _group_sum(tl.where(c_mask, a * dd, 0.0), same_group, GPP) / count
    m1 = _group_sum(tl.where(c_mask, a * da, 0.0), same_group, GPP) / count
    P = rstd * a
    Q = -rstd * rstd * m1
    R = rstd * (rstd * mean * m1 - m0)
    for hw0 in range(0, HW, BLOCK_HW):
        hw = hw0 + hw_lane
        m = (hw < HW)[:, None] & c_mask[None, :]
        v = tl.load(x_n + hw[:, None] * sx_hw + c[None, :] * sx_c, mask=m, other=0.0).to(tl.float32)
        g = tl.load(dy_n + hw[:, None] * sdy_hw + c[None, :] * sdy_c, mask=m, other=0.0).to(tl.float32)
        dz = _silu_grad(v * A[None, :] + D[None, :], g)
        dx = dz * P[None, :] + v * Q[None, :] + R[None, :]
        tl.store(dx_n + hw[:, None] * sdx_hw + c[None, :] * sdx_c, dx.to(dx_ptr.dtype.element_ty), mask=m)
