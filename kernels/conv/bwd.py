"""Backward kernels of the convolution inside fused_conv2d: data gradient and weight gradient.

Glossary: N images, CI input channels, H x W stored input size, K odd kernel size (PAD = K // 2,
"same" padding of the optionally 2x-upsampled input of length L = S or 2S per dimension),
STRIDE 1 or 2, CO output channels, OH x OW output size, R = N * OH * OW output positions,
P = H * W input pixels of one image, NPT = cdiv(P, BLOCK_P) pixel tiles, SPLIT reduction splits.

Both kernels start from dacc, the gradient of the conv accumulator
    acc[n, co, o] = sum_{kh, kw, ci} a[n, ci, src(o, kh, kw)] * w[co, ci, kh, kw],
    a = act_in(pre),  pre = (x - in_centre[n, ci]) * in_scale[n, ci] + in_shift[n, ci]   (the prologue)
where src is recgen.kernels.conv.index.source_index (padding, reflection and upsampling folded in).

_conv2d_bwd_data_kernel: da = the transposed conv, in GATHER form (deterministic, no atomics).
One program owns BLOCK_P input pixels of ONE image and BLOCK_CI input channels, and sums
dacc[n, :, o] @ w[:, :, tap] over every (tap, o) that read that pixel in the forward; those are
enumerated by target_index, the inverse of source_index. All candidates of one tap share the
same weight tile, so their dacc rows are summed first and multiplied once per (tap, CO chunk).
The prologue's backward follows in the same program: d_pre = da * act_in'(pre), dx = d_pre *
in_scale, and per-program partial sums of d_pre * (x - in_centre) (-> d in_scale; centred, so it
does not cancel against mean * sum d_pre), d_pre (-> d in_shift) and d_pre * in_scale (-> minus
d in_centre; summed per element as torch's autograd does, so an infinite scale gives torch's NaN).

_conv2d_bwd_weight_kernel: dw[co, ci, tap] = sum_r dacc[r, co] * a[src(r, tap), ci], a GEMM per
tap whose B operand is recomputed from x with the prologue on the fly (zero at padding). One
program owns one tap, BLOCK_CO x BLOCK_CI of dw and one of SPLIT slices of the reduction over R;
the launcher sums the SPLIT float32 partials.

Activation codes (IN_ACT): 0 none, 1 relu, 2 leaky_relu with a runtime slope (as kernels/conv/fwd.py).
"""

import triton
import triton.language as tl

from recgen.kernels.conv.index import channel_block, pixel_tile, source_index, target_index
from recgen.kernels.math import activation, activation_grad, mma


@triton.jit
def _conv2d_bwd_data_kernel(
    dacc_ptr,     # (N, CO, OH, OW) gradient of the conv accumulator, any strides
    w_ptr,        # (K, K, CO, CI) weight, contiguous (the launcher permutes (CO, CI, K, K))
    x_ptr,        # (N, CI, H, W) forward input, any strides (read when the prologue is on)
    in_centre_ptr, # (N, CI) float32 prologue centre, contiguous (HAS_IN_CENTRE)
    in_scale_ptr, # (N, CI) float32 prologue scale, contiguous (HAS_IN_SCALE)
    in_shift_ptr, # (N, CI) float32 prologue shift, contiguous (HAS_IN_SHIFT)
    dx_ptr,       # (N, CI, H, W) out: input gradient in x's dtype, any strides
    dscale_ptr,   # (N, NPT, CI) float32 out: per-program sums of d_pre * (x - centre) (HAS_IN_SCALE)
    dshift_ptr,   # (N, NPT, CI) float32 out: per-program sums of d_pre (HAS_IN_SHIFT)
    dcentre_ptr,  # (N, NPT, CI) float32 out: per-program sums of d_pre * in_scale, i.e. of dx (HAS_IN_CENTRE)
    CI, CO, H, W, OH, OW, NPT,
    stride_dn, stride_dc, stride_dh, stride_dw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_gn, stride_gc, stride_gh, stride_gw,
    in_slope,     # negative slope of act_in when IN_ACT == 2
    K: tl.constexpr, STRIDE: tl.constexpr, UPSAMPLE: tl.constexpr, REFLECT: tl.constexpr,
    HAS_IN_CENTRE: tl.constexpr, HAS_IN_SCALE: tl.constexpr, HAS_IN_SHIFT: tl.constexpr, IN_ACT: tl.constexpr,
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_ci = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    offs_p, mask_p, ih, iw = pixel_tile(pid_p, H, W, BLOCK_P)
    offs_ci, mask_ci = channel_block(pid_ci, CI, BLOCK_CI)
    ar_co = tl.arange(0, BLOCK_CO)
    n_cand = (1 + UPSAMPLE) * (1 + 2 * REFLECT)  # preimages per dimension, see target_index

    dacc_img = dacc_ptr + n * stride_dn
    acc = tl.zeros([BLOCK_P, BLOCK_CI], dtype=tl.float32)
    for kh in range(K):
        for kw in range(K):
            w_tap = w_ptr + (kh * K + kw) * CO * CI  # a weight has far fewer than 2**31 elements
            for c0 in range(0, CO, BLOCK_CO):
                offs_co = c0 + ar_co
                mask_co = offs_co < CO
                col = offs_co.to(tl.int64) * stride_dc
                b = tl.load(w_tap + offs_co[:, None] * CI + offs_ci[None, :],
                            mask=mask_co[:, None] & mask_ci[None, :], other=0.0)
                # Sum of the dacc rows of every output position that read these pixels at this tap.
                # A candidate no pixel of the tile has (a mirror away from the edges, the wrong
                # parity for STRIDE 2, a position past the output) is skipped as a whole. Runtime
                # loops: unrolling the up to 6 x 6 gathers made a 5x larger cubin, 5x slower to compile.
                g = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32)
                hit = offs_p < 0  # pixels some output position reads at this tap
                for ch in range(n_cand):
                    oh, valid_h = target_index(ih, kh, H, OH, ch, STRIDE, K // 2, UPSAMPLE, REFLECT)
                    valid_h = valid_h & mask_p
                    if tl.max(valid_h.to(tl.int32), axis=0) > 0:
                        row_h = oh.to(tl.int64) * stride_dh
                        for cw in range(n_cand):
                            ow, valid_w = target_index(iw, kw, W, OW, cw, STRIDE, K // 2, UPSAMPLE, REFLECT)
                            valid = valid_h & valid_w
                            if tl.max(valid.to(tl.int32), axis=0) > 0:
                                hit = hit | valid
                                row = row_h + ow.to(tl.int64) * stride_dw
                                g += tl.load(dacc_img + row[:, None] + col[None, :],
                                             mask=valid[:, None] & mask_co[None, :], other=0.0).to(tl.float32)
                # A pixel no output reads at this tap gets no term, not 0 * w: a non-finite weight
                # must not reach it (torch's gradient has no such term either).
                acc += tl.where(hit[:, None], mma(g, b, DOT_FP32, INPUT_PRECISION), 0.0)

    # Prologue backward: acc holds da, the gradient of a = act_in(pre).
    mask = mask_p[:, None] & mask_ci[None, :]
    ih64 = ih.to(tl.int64)
    iw64 = iw.to(tl.int64)
    ci64 = offs_ci.to(tl.int64)
    d_pre = acc
    if HAS_IN_SCALE or IN_ACT != 0:
        x = tl.load(x_ptr + n * stride_xn + ci64[None, :] * stride_xc
                    + (ih64 * stride_xh + iw64 * stride_xw)[:, None], mask=mask, other=0.0).to(tl.float32)
        if HAS_IN_CENTRE:
            # Zero outside the tile: an infinite centre must not reach the sums as 0 * inf there.
            x = tl.where(mask, x - tl.load(in_centre_ptr + n * CI + offs_ci, mask=mask_ci, other=0.0)[None, :], 0.0)
        pre = x  # from here x is centred: the dscale sum below is of d_pre * (x - centre)
        if HAS_IN_SCALE:
            scale = tl.load(in_scale_ptr + n * CI + offs_ci, mask=mask_ci, other=0.0)
            pre = pre * scale[None, :]
        if HAS_IN_SHIFT:
            pre = pre + tl.load(in_shift_ptr + n * CI + offs_ci, mask=mask_ci, other=0.0)[None, :]
        d_pre = activation_grad(acc, pre, IN_ACT, in_slope)
    d_pre = tl.where(mask, d_pre, 0.0)
    part = (n * NPT + pid_p) * CI + offs_ci
    if HAS_IN_SCALE:
        tl.store(dscale_ptr + part, tl.sum(d_pre * x, axis=0), mask=mask_ci)
        dx = d_pre * scale[None, :]
    else:
        dx = d_pre
    if HAS_IN_SHIFT:
        tl.store(dshift_ptr + part, tl.sum(d_pre, axis=0), mask=mask_ci)
    if HAS_IN_CENTRE:
        tl.store(dcentre_ptr + part, tl.sum(tl.where(mask, dx, 0.0), axis=0), mask=mask_ci)
    tl.store(dx_ptr + n * stride_gn + ci64[None, :] * stride_gc + (ih64 * stride_gh + iw64 * stride_gw)[:, None],
             dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv2d_bwd_weight_kernel(
    dacc_ptr,     # (N, CO, OH, OW) gradient of the conv accumulator, any strides
    x_ptr,        # (N, CI, H, W) forward input, any strides
    in_centre_ptr, # (N, CI) float32 prologue centre, contiguous (HAS_IN_CENTRE)
    in_scale_ptr, # (N, CI) float32 prologue scale, contiguous (HAS_IN_SCALE)
    in_shift_ptr, # (N, CI) float32 prologue shift, contiguous (HAS_IN_SHIFT)
    dw_ptr,       # (SPLIT, CO, CI, K, K) float32 out: partial weight gradient of each split
    CI, CO, H, W, OH, OW,
    R,            # N * OH * OW, the reduction length
    R_PER_SPLIT,  # positions of R per split, a multiple of BLOCK_R
    stride_dn, stride_dc, stride_dh, stride_dw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    in_slope,     # negative slope of act_in when IN_ACT == 2
    K: tl.constexpr, STRIDE: tl.constexpr, UPSAMPLE: tl.constexpr, REFLECT: tl.constexpr,
    HAS_IN_CENTRE: tl.constexpr, HAS_IN_SCALE: tl.constexpr, HAS_IN_SHIFT: tl.constexpr, IN_ACT: tl.constexpr,
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid = tl.program_id(0)
    tap = tl.program_id(1)
    split = tl.program_id(2)
    n_ci_blocks = tl.cdiv(CI, BLOCK_CI)
    offs_co, mask_co = channel_block(pid // n_ci_blocks, CO, BLOCK_CO)
    offs_ci, mask_ci = channel_block(pid % n_ci_blocks, CI, BLOCK_CI)
    co64 = offs_co.to(tl.int64)
    ci64 = offs_ci.to(tl.int64)
    kh = tap // K
    kw = tap % K
    prologue = HAS_IN_CENTRE or HAS_IN_SCALE or HAS_IN_SHIFT or IN_ACT != 0
    ar_r = tl.arange(0, BLOCK_R)
    OHW = OH * OW

    r_start = split * R_PER_SPLIT
    r_end = tl.minimum(r_start + R_PER_SPLIT, R)
    acc = tl.zeros([BLOCK_CO, BLOCK_CI], dtype=tl.float32)
    for r0 in range(r_start, r_end, BLOCK_R):
        offs_r = r0 + ar_r
        mask_r = offs_r < r_end
        img = offs_r // OHW
        oh = (offs_r % OHW) // OW
        ow = offs_r % OW
        img64 = img.to(tl.int64)
        d = tl.load(dacc_ptr + co64[:, None] * stride_dc
                    + (img64 * stride_dn + oh.to(tl.int64) * stride_dh + ow.to(tl.int64) * stride_dw)[None, :],
                    mask=mask_co[:, None] & mask_r[None, :], other=0.0)
        ih, valid_h = source_index(oh, kh, H, STRIDE, K // 2, UPSAMPLE, REFLECT)
        iw, valid_w = source_index(ow, kw, W, STRIDE, K // 2, UPSAMPLE, REFLECT)
        mask_a = (mask_r & valid_h & valid_w)[:, None] & mask_ci[None, :]
        pix = img64 * stride_xn + ih.to(tl.int64) * stride_xh + iw.to(tl.int64) * stride_xw
        a = tl.load(x_ptr + pix[:, None] + ci64[None, :] * stride_xc, mask=mask_a, other=0.0)
        if prologue:
            a = a.to(tl.float32)
            nc = img64[:, None] * CI + offs_ci[None, :]  # (n, ci) varies along the rows here
            if HAS_IN_CENTRE:
                a = a - tl.load(in_centre_ptr + nc, mask=mask_a, other=0.0)
            if HAS_IN_SCALE:
                a = a * tl.load(in_scale_ptr + nc, mask=mask_a, other=0.0)
            if HAS_IN_SHIFT:
                a = a + tl.load(in_shift_ptr + nc, mask=mask_a, other=0.0)
            a = activation(a, IN_ACT, in_slope)
            # Padding pads the post-prologue activation: a zero-padded tap reads 0, not act(shift).
            a = tl.where(mask_a, a, 0.0).to(x_ptr.dtype.element_ty)
        acc += mma(d, a, DOT_FP32, INPUT_PRECISION)

    KK = K * K
    out = dw_ptr + split.to(tl.int64) * CO * CI * KK + co64[:, None] * (CI * KK) + ci64[None, :] * KK + tap
    tl.store(out, acc, mask=mask_co[:, None] & mask_ci[None, :])
