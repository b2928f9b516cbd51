"""Fused 2-D convolution kernels: implicit GEMM over channels-last data.

Glossary: N images, CI input channels, H x W stored input size, K odd kernel size (PAD = K // 2,
"same" padding of the optionally 2x-upsampled input), STRIDE 1 or 2, CO output channels,
OH x OW output size, M = OH * OW output pixels of one image, TILES = cdiv(M, BLOCK_M).

The forward is a GEMM  out[m, co] = sum_{kh, kw, ci} a[src(m, kh, kw), ci] * w[kh, kw, ci, co]
whose A operand is gathered on the fly: for each tap (kh, kw) the rows of A are the input pixels
that the BLOCK_M output pixels read (recgen.kernels.conv.index.source_index, which also folds
the upsampling and the reflection), so neither the padded nor the upsampled input is ever
materialised. One program owns BLOCK_M output pixels of ONE image and BLOCK_CO output channels,
so its per-channel partial statistics belong to a single (image, channel) pair.

Fused around the GEMM (see recgen.reference.conv.fused_conv2d for the semantics):
  prologue  a   = act_in((x - in_centre[n, ci]) * in_scale[n, ci] + in_shift[n, ci]), zero where
                  the tap reads padding. A normalisation passes its mean as the centre and beta as
                  the shift: x - mean is exact-ish where the folded x * scale + (beta - mean * scale)
                  would cancel two terms |mean| / std times larger than the result.
  epilogue  z   = acc * out_scale[co] + out_shift[co] + residual[n, co, oh, ow]
            out = act_out(z);  STATS: per program and output channel, of z as stored: a pivot p
            (z of the tile's first pixel), the sum of z - p and M2 = sum (z - tile mean)^2, so
            neither the sums nor M2 cancel however large the mean is against the spread (the
            launcher merges the tiles with Chan's formula, in float64).
Activation codes (IN_ACT, OUT_ACT): 0 none, 1 relu, 2 leaky_relu with a runtime slope.
"""

import triton
import triton.language as tl

from recgen.kernels.conv.index import channel_block, pixel_tile, source_index
from recgen.kernels.math import activation, mma


@triton.jit
def _conv2d_fwd_kernel(
    x_ptr,          # (N, CI, H, W) input, any strides (channels-last is fast: stride_xc == 1)
    w_ptr,          # (K, K, CI, CO) weight, contiguous (the launcher permutes (CO, CI, K, K))
    in_centre_ptr,  # (N, CI) float32 prologue centre, subtracted first, contiguous (HAS_IN_CENTRE)
    in_scale_ptr,   # (N, CI) float32 prologue scale, contiguous (HAS_IN_SCALE)
    in_shift_ptr,   # (N, CI) float32 prologue shift, contiguous (HAS_IN_SHIFT)
    out_scale_ptr,  # (CO,) float32 epilogue scale (HAS_OUT_SCALE)
    out_shift_ptr,  # (CO,) float32 epilogue shift, i.e. the bias (HAS_OUT_SHIFT)
    res_ptr,        # (N, CO, OH, OW) residual added before act_out, any strides (HAS_RESIDUAL)
    out_ptr,        # (N, CO, OH, OW) out: act_out(z) in the output dtype, any strides
    pivot_ptr,      # (N, TILES, CO) float32 out: z at the program's first pixel (STATS)
    sum_ptr,        # (N, TILES, CO) float32 out: per-program sums of z - pivot (STATS)
    m2_ptr,         # (N, TILES, CO) float32 out: per-program sums of (z - the tile's mean of z)^2 (STATS)
    CI, H, W, CO, OH, OW, TILES,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_rn, stride_rc, stride_rh, stride_rw,
    stride_on, stride_oc, stride_oh, stride_ow,
    in_slope,       # negative slope of act_in when IN_ACT == 2
    out_slope,      # negative slope of act_out when OUT_ACT == 2
    K: tl.constexpr, STRIDE: tl.constexpr, UPSAMPLE: tl.constexpr, REFLECT: tl.constexpr,
    HAS_IN_CENTRE: tl.constexpr, HAS_IN_SCALE: tl.constexpr, HAS_IN_SHIFT: tl.constexpr, IN_ACT: tl.constexpr,
    HAS_OUT_SCALE: tl.constexpr, HAS_OUT_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    OUT_ACT: tl.constexpr, STATS: tl.constexpr,
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_co = tl.program_id(1)
    n = (pid_m // TILES).to(tl.int64)
    tile = pid_m % TILES
    offs_m, mask_m, oh, ow = pixel_tile(tile, OH, OW, BLOCK_M)
    offs_co, mask_co = channel_block(pid_co, CO, BLOCK_CO)
    ar_ci = tl.arange(0, BLOCK_CI)
    PROLOGUE: tl.constexpr = HAS_IN_CENTRE or HAS_IN_SCALE or HAS_IN_SHIFT or IN_ACT != 0

    x_img = x_ptr + n * stride_xn
    acc = tl.zeros([BLOCK_M, BLOCK_CO], dtype=tl.float32)
    for kh in range(K):
        ih, valid_h = source_index(oh, kh, H, STRIDE, K // 2, UPSAMPLE, REFLECT)
        for kw in range(K):
            iw, valid_w = source_index(ow, kw, W, STRIDE, K // 2, UPSAMPLE, REFLECT)
            valid = mask_m & valid_h & valid_w
            pix = x_img + ih.to(tl.int64) * stride_xh + iw.to(tl.int64) * stride_xw
            tap_row = (kh * K + kw) * CI  # first row of this tap in the (K*K*CI, CO) weight
            for c0 in range(0, CI, BLOCK_CI):
                offs_ci = c0 + ar_ci
                mask_ci = offs_ci < CI
                mask_a = valid[:, None] & mask_ci[None, :]
                a = tl.load(pix[:, None] + offs_ci[None, :].to(tl.int64) * stride_xc, mask=mask_a, other=0.0)
                if PROLOGUE:
                    a = a.to(tl.float32)
                    if HAS_IN_CENTRE:
                        a = a - tl.load(in_centre_ptr + n * CI + offs_ci, mask=mask_ci, other=0.0)[None, :]
                    if HAS_IN_SCALE:
                        a = a * tl.load(in_scale_ptr + n * CI + offs_ci, mask=mask_ci, other=0.0)[None, :]
                    if HAS_IN_SHIFT:
                        a = a + tl.load(in_shift_ptr + n * CI + offs_ci, mask=mask_ci, other=0.0)[None, :]
                    a = activation(a, IN_ACT, in_slope)
                    # Padding pads the post-prologue activation: a zero-padded tap reads 0, not act(shift).
                    a = tl.where(mask_a, a, 0.0)
                b = tl.load(w_ptr + (tap_row + offs_ci[:, None]).to(tl.int64) * CO + offs_co[None, :],
                            mask=mask_ci[:, None] & mask_co[None, :], other=0.0)
                acc += mma(a, b, DOT_FP32, INPUT_PRECISION)

    if HAS_OUT_SCALE:
        acc = acc * tl.load(out_scale_ptr + offs_co, mask=mask_co, other=0.0)[None, :]
    if HAS_OUT_SHIFT:
        acc = acc + tl.load(out_shift_ptr + offs_co, mask=mask_co, other=0.0)[None, :]
    mask_o = mask_m[:, None] & mask_co[None, :]
    oh64 = oh.to(tl.int64)
    ow64 = ow.to(tl.int64)
    co64 = offs_co.to(tl.int64)
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + n * stride_rn + co64[None, :] * stride_rc
                      + (oh64 * stride_rh + ow64 * stride_rw)[:, None], mask=mask_o, other=0.0)
        acc = acc + res.to(tl.float32)
    if STATS:
        # Statistics of z as stored (rounded to the output dtype): the normalisation and its
        # backward then see the same values; with fp32 z but bf16 storage, the var backward
        # (2 z dsumsq + dsum, which cancels when |mean| >> std) would amplify the rounding.
        # Rows past the image (and columns past CO) would add out_shift: keep them out of the sums.
        z = tl.where(mask_o, acc.to(out_ptr.dtype.element_ty).to(tl.float32), 0.0)
        part = (n * TILES + tile) * CO + co64
        # Shifted by a value of the data (the tile's first pixel, always inside the image), the
        # sum adds numbers of the spread's size; the deviations from the tile's mean make M2.
        pivot = tl.sum(tl.where((tl.arange(0, BLOCK_M) == 0)[:, None], z, 0.0), axis=0)
        shifted = tl.where(mask_o, z - pivot[None, :], 0.0)
        shifted_sum = tl.sum(shifted, axis=0)
        deviation = tl.where(mask_o, shifted - (shifted_sum / tl.sum(mask_m.to(tl.float32), axis=0))[None, :], 0.0)
        tl.store(pivot_ptr + part, pivot, mask=mask_co)
        tl.store(sum_ptr + part, shifted_sum, mask=mask_co)
        tl.store(m2_ptr + part, tl.sum(deviation * deviation, axis=0), mask=mask_co)
    out = activation(acc, OUT_ACT, out_slope)
    tl.store(out_ptr + n * stride_on + co64[None, :] * stride_oc + (oh64 * stride_oh + ow64 * stride_ow)[:, None],
             out.to(out_ptr.dtype.element_ty), mask=mask_o)
