"""Dense-layer kernels: out = act(x @ W^T + bias + residual) as a GEMM with a fused epilogue, and
its backward.

Glossary: M rows (every leading dimension of the input flattened, as nn.Linear takes them),
I input features (in_features), O output features (out_features). x is (M, I), the weight W is
(O, I) as nn.Linear stores it, bias (O,), residual and out (M, O); any strides (a stride of 0
too, as an expanded gradient has). z = x @ W^T + bias + residual is the pre-activation.

_linear_fwd_kernel: one program owns BLOCK_M rows and BLOCK_O output features and loops over I
in chunks of BLOCK_I, accumulating x[m, i] * W[o, i] in float32 (W read transposed through its
strides, never copied); the epilogue adds the bias and the residual, applies the activation and
stores in the output dtype. For leaky_relu with a negative slope the output does not carry z's
sign (both signs of z give a positive output), so the forward also stores the sign bit z > 0 as
int8 (SAVE_SIGN); every other activation's derivative is computed from the output itself.

_linear_bwd_data_kernel: dx = dz @ W with dz = dout * act'(z) recomputed per tile from the
saved output (or the sign bits): one program owns BLOCK_M rows and BLOCK_I input features and
loops over O in chunks of BLOCK_O. No pre-activation tensor is read or written.

_linear_bwd_weight_kernel: dW = dz^T @ x over the M rows, one program per BLOCK_O x BLOCK_I tile
of dW and per slice of SPLIT slices of M (each writes its float32 partial; the launcher sums the
SPLIT partials with torch, in a fixed order: deterministic, no atomics). The programs of the
first I tile (pid_i == 0) also write, for their O block and slice, the partial sums of dz over
the rows (-> d bias) and dz itself (-> d residual, whose gradient z passes on unchanged).

Activation codes (ACT): 0 none, 1 relu, 2 leaky_relu with a runtime slope, 3 tanh, 4 sigmoid
(recgen.kernels.math.activation).
"""

import triton
import triton.language as tl

from recgen.kernels.math import activation, activation_grad_from_output, mma


@triton.jit
def _grad_of_z(dout_ptr, out_ptr, sign_ptr, offs_m, offs_o, mask, O,
               stride_gm, stride_go, stride_om, stride_oo, slope,
               ACT: tl.constexpr, USE_SIGN: tl.constexpr):
    """dz = dout * act'(z) in float32 on the tile [offs_m, offs_o] (int64 offsets; any 2-D
    broadcast of them, so a tile may be read transposed), zero outside `mask`."""
    dz = tl.load(dout_ptr + offs_m * stride_gm + offs_o * stride_go, mask=mask, other=0.0).to(tl.float32)
    if USE_SIGN:
        # leaky_relu with slope < 0: torch's rule on z itself, the slope where not z > 0.
        positive = tl.load(sign_ptr + offs_m * O + offs_o, mask=mask, other=0)
        dz = tl.where(positive != 0, dz, dz * slope)
    elif ACT != 0:
        out = tl.load(out_ptr + offs_m * stride_om + offs_o * stride_oo, mask=mask, other=0.0).to(tl.float32)
        dz = activation_grad_from_output(dz, out, ACT, slope)
    return dz


@triton.jit
def _linear_fwd_kernel(
    x_ptr,        # (M, I) input, any strides
    w_ptr,        # (O, I) weight, any strides (read as W^T through them)
    b_ptr,        # (O,) bias (HAS_BIAS)
    res_ptr,      # (M, O) residual added before the activation, any strides (HAS_RESIDUAL)
    out_ptr,      # (M, O) out: act(z) in the output dtype, any strides
    sign_ptr,     # (M, O) int8 out: z > 0, contiguous (SAVE_SIGN)
    M, I, O,
    stride_xm, stride_xi,
    stride_wo, stride_wi,
    stride_rm, stride_ro,
    stride_om, stride_oo,
    slope,        # negative slope of leaky_relu (ACT == 2)
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr,
    SAVE_SIGN: tl.constexpr,  # leaky_relu with slope < 0: the output does not carry z's sign
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    mask_m = offs_m < M
    mask_o = offs_o < O
    m64 = offs_m.to(tl.int64)  # M * I and M * O may pass 2**31
    o64 = offs_o.to(tl.int64)
    ar_i = tl.arange(0, BLOCK_I)

    acc = tl.zeros([BLOCK_M, BLOCK_O], dtype=tl.float32)
    for i0 in range(0, I, BLOCK_I):
        offs_i = (i0 + ar_i).to(tl.int64)
        mask_i = offs_i < I
        a = tl.load(x_ptr + m64[:, None] * stride_xm + offs_i[None, :] * stride_xi,
                    mask=mask_m[:, None] & mask_i[None, :], other=0.0)
        b = tl.load(w_ptr + offs_i[:, None] * stride_wi + o64[None, :] * stride_wo,
                    mask=mask_i[:, None] & mask_o[None, :], other=0.0)
        acc += mma(a, b, DOT_FP32, INPUT_PRECISION)

    if HAS_BIAS:
        acc = acc + tl.load(b_ptr + o64, mask=mask_o, other=0.0).to(tl.float32)[None, :]
    mask = mask_m[:, None] & mask_o[None, :]
    if HAS_RESIDUAL:
        acc = acc + tl.load(res_ptr + m64[:, None] * stride_rm + o64[None, :] * stride_ro, mask=mask,
                            other=0.0).to(tl.float32)
    if SAVE_SIGN:
        tl.store(sign_ptr + m64[:, None] * O + o64[None, :], (acc > 0.0).to(tl.int8), mask=mask)
    out = activation(acc, ACT, slope)
    tl.store(out_ptr + m64[:, None] * stride_om + o64[None, :] * stride_oo, out.to(out_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _linear_bwd_data_kernel(
    dout_ptr,     # (M, O) gradient of out, any strides
    out_ptr,      # (M, O) forward output, any strides (read when ACT != 0 and not USE_SIGN)
    sign_ptr,     # (M, O) int8 z > 0 of the forward, contiguous (USE_SIGN)
    w_ptr,        # (O, I) weight, any strides
    dx_ptr,       # (M, I) out: input gradient in the weight's dtype, any strides
    M, I, O,
    stride_gm, stride_go,
    stride_om, stride_oo,
    stride_wo, stride_wi,
    stride_dm, stride_di,
    slope,        # negative slope of leaky_relu (ACT == 2)
    ACT: tl.constexpr, USE_SIGN: tl.constexpr,
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask_m = offs_m < M
    mask_i = offs_i < I
    m64 = offs_m.to(tl.int64)
    i64 = offs_i.to(tl.int64)
    ar_o = tl.arange(0, BLOCK_O)

    acc = tl.zeros([BLOCK_M, BLOCK_I], dtype=tl.float32)
    for o0 in range(0, O, BLOCK_O):
        offs_o = (o0 + ar_o).to(tl.int64)
        mask_o = offs_o < O
        dz = _grad_of_z(dout_ptr, out_ptr, sign_ptr, m64[:, None], offs_o[None, :],
                        mask_m[:, None] & mask_o[None, :], O, stride_gm, stride_go, stride_om, stride_oo, slope,
                        ACT, USE_SIGN)
        w = tl.load(w_ptr + offs_o[:, None] * stride_wo + i64[None, :] * stride_wi,
                    mask=mask_o[:, None] & mask_i[None, :], other=0.0)
        acc += mma(dz, w, DOT_FP32, INPUT_PRECISION)

    tl.store(dx_ptr + m64[:, None] * stride_dm + i64[None, :] * stride_di, acc.to(dx_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_i[None, :])


@triton.jit
def _linear_bwd_weight_kernel(
    dout_ptr,     # (M, O) gradient of out, any strides
    out_ptr,      # (M, O) forward output, any strides (read when ACT != 0 and not USE_SIGN)
    sign_ptr,     # (M, O) int8 z > 0 of the forward, contiguous (USE_SIGN)
    x_ptr,        # (M, I) forward input, any strides (HAS_DW)
    dw_ptr,       # (SPLIT, O, I) float32 out: each split's partial weight gradient, contiguous (HAS_DW)
    db_ptr,       # (SPLIT, O) float32 out: each split's partial sums of dz over its rows (HAS_DB)
    dres_ptr,     # (M, O) out: dz, the residual's gradient, in its dtype, contiguous (HAS_DRES)
    M, I, O,
    M_PER_SPLIT,  # rows of M per split, a multiple of BLOCK_M
    stride_gm, stride_go,
    stride_om, stride_oo,
    stride_xm, stride_xi,
    slope,        # negative slope of leaky_relu (ACT == 2)
    ACT: tl.constexpr, USE_SIGN: tl.constexpr,
    HAS_DW: tl.constexpr, HAS_DB: tl.constexpr, HAS_DRES: tl.constexpr,
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_i = tl.program_id(1)
    split = tl.program_id(2)
    offs_o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    mask_o = offs_o < O
    mask_i = offs_i < I
    o64 = offs_o.to(tl.int64)
    i64 = offs_i.to(tl.int64)
    ar_m = tl.arange(0, BLOCK_M)
    # The first column of programs (pid_i == 0) writes d bias and d residual, once per element:
    # a [BLOCK_O] mask (a scalar condition does not broadcast into a store mask everywhere).
    first = (tl.zeros([BLOCK_O], dtype=tl.int32) + pid_i) == 0

    m_start = split * M_PER_SPLIT
    m_end = tl.minimum(m_start + M_PER_SPLIT, M)
    acc = tl.zeros([BLOCK_O, BLOCK_I], dtype=tl.float32)
    db = tl.zeros([BLOCK_O], dtype=tl.float32)
    for m0 in range(m_start, m_end, BLOCK_M):
        offs_m = (m0 + ar_m).to(tl.int64)
        mask_m = offs_m < m_end
        # dz read transposed, [BLOCK_O, BLOCK_M]: the A operand of dW = dz^T @ x.
        mask_t = mask_o[:, None] & mask_m[None, :]
        dz_t = _grad_of_z(dout_ptr, out_ptr, sign_ptr, offs_m[None, :], o64[:, None], mask_t, O,
                          stride_gm, stride_go, stride_om, stride_oo, slope, ACT, USE_SIGN)
        if HAS_DW:
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + i64[None, :] * stride_xi,
                        mask=mask_m[:, None] & mask_i[None, :], other=0.0)
            acc += mma(dz_t, x, DOT_FP32, INPUT_PRECISION)
        if HAS_DB:
            db += tl.sum(dz_t, axis=1)
        if HAS_DRES:
            tl.store(dres_ptr + offs_m[None, :] * O + o64[:, None], dz_t.to(dres_ptr.dtype.element_ty),
                     mask=mask_t & first[:, None])

    if HAS_DW:
        tl.store(dw_ptr + (split.to(tl.int64) * O + o64[:, None]) * I + i64[None, :], acc,
                 mask=mask_o[:, None] & mask_i[None, :])
    if HAS_DB:
        tl.store(db_ptr + split.to(tl.int64) * O + o64, db, mask=mask_o & first)
