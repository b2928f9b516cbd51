"""Affine + activation kernels: the elementwise pass that applies a batch/instance normalisation
once its statistics are known, out = act((y - centre[n, c]) * scale[n, c] + shift[n, c] + residual).

The centre (HAS_CENTRE; typically the mean) is what keeps the normalisation accurate where
|mean| >> std: folded into the shift (shift' = shift - mean * scale) the two large terms
y * scale and shift' cancel, leaving ~|mean| / std times more rounding in out and, worse, in
the backward's sum(dz * y) - mean * sum(dz). y - centre is taken in float32, before the multiply.

Glossary: N images, C channels, H x W pixels per image (HW = H * W, pixel p = h * W + w).
Tensors are logical (N, C, H, W) with any strides (channels-last memory, stride_c == 1, is the
fast case: a tile row of channels is contiguous). Per-image vectors centre/scale/shift are (N, C)
with any strides (stride_n == 0 for a per-channel vector expanded over the batch).

Grid: axis 0 runs over N * TILES (TILES = cdiv(HW, BLOCK_P) pixel tiles per image, so a tile
never straddles two images and centre/scale/shift are one [BLOCK_C] vector per program), axis 1 over
channel blocks of BLOCK_C. ACT: 0 none, 1 relu, 2 leaky_relu (runtime `slope`).

The backward writes, per program, partial sums over its pixel tile of dz * (y - centre) (-> dscale;
dz * y without a centre), dz (-> dshift) and dz * scale (-> dcentre = -sum dz * scale, as torch
sums it, so that an infinite scale gives torch's NaN or infinity) into float32 buffers
(N, TILES, C); the launcher sums them over TILES with torch, so the result is deterministic (no
atomics).
"""

import triton
import triton.language as tl

from recgen.kernels.math import activation, activation_grad


@triton.jit
def _program_tile(HW, W, C, TILES, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's image n, pixel tile, pixel rows h / columns w and channels (int64), and
    the channel mask and the [BLOCK_P, BLOCK_C] tile's mask."""
    pid_nt = tl.program_id(0)
    n = (pid_nt // TILES).to(tl.int64)
    tile = pid_nt % TILES
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)  # within one image: int32 is enough
    h = (offs_p // W).to(tl.int64)
    w = (offs_p % W).to(tl.int64)
    offs_c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask_c = offs_c < C
    return n, tile, h, w, offs_c, mask_c, (offs_p < HW)[:, None] & mask_c[None, :]


@triton.jit
def _offsets(n, h, w, offs_c, stride_n, stride_c, stride_h, stride_w):
    """[BLOCK_P, BLOCK_C] element offsets of pixels (h, w) and channels `offs_c` of image n."""
    return n * stride_n + (h * stride_h + w * stride_w)[:, None] + (offs_c * stride_c)[None, :]


@triton.jit
def _load_tile(ptr, n, h, w, offs_c, stride_n, stride_c, stride_h, stride_w, mask, PRESENT: tl.constexpr):
    """The [BLOCK_P, BLOCK_C] tile of a (N, C, H, W) tensor in float32, zero where not `mask`;
    0.0 (a placeholder, never read) when not PRESENT."""
    tile = 0.0
    if PRESENT:
        tile = tl.load(ptr + _offsets(n, h, w, offs_c, stride_n, stride_c, stride_h, stride_w), mask=mask,
                       other=0.0).to(tl.float32)
    return tile


@triton.jit
def _load_channels(ptr, n, offs_c, stride_n, stride_c, mask_c, PRESENT: tl.constexpr):
    """Image n's [BLOCK_C] vector of a (N, C) tensor in float32; 0.0 (never read) when not PRESENT."""
    vec = 0.0
    if PRESENT:
        vec = tl.load(ptr + n * stride_n + offs_c * stride_c, mask=mask_c, other=0.0).to(tl.float32)
    return vec


@triton.jit
def _centred(y, centre, HAS_CENTRE: tl.constexpr):
    """y - centre in float32 (y itself without a centre)."""
    yc = y
    if HAS_CENTRE:
        yc = y - centre[None, :]
    return yc


@triton.jit
def _pre_activation(y, centre, scale, shift, res, HAS_CENTRE: tl.constexpr,
                    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """z = (y - centre) * scale + shift + residual in float32, each term only when present."""
    z = _centred(y, centre, HAS_CENTRE)
    if HAS_SCALE:
        z = z * scale[None, :]
    if HAS_SHIFT:
        z = z + shift[None, :]
    if HAS_RESIDUAL:
        z = z + res
    return z


@triton.jit
def _affine_act_fwd_kernel(
    y_ptr,       # (N, C, H, W) input, any strides
    centre_ptr,  # (N, C) per-image channel centre, subtracted from y before the scale (HAS_CENTRE)
    scale_ptr,   # (N, C) per-image channel scale (HAS_SCALE)
    shift_ptr,   # (N, C) per-image channel shift (HAS_SHIFT)
    res_ptr,     # (N, C, H, W) residual, any strides (HAS_RESIDUAL)
    out_ptr,     # (N, C, H, W) out: act(z), in the output dtype
    slope,       # float: negative slope of leaky_relu (ACT == 2)
    C, W, HW, TILES,
    stride_yn, stride_yc, stride_yh, stride_yw,
    stride_mn, stride_mc,                         # centre (m)
    stride_sn, stride_sc, stride_tn, stride_tc,   # scale (s), shift (t)
    stride_rn, stride_rc, stride_rh, stride_rw,
    stride_on, stride_oc, stride_oh, stride_ow,
    HAS_CENTRE: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    ACT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, tile, h, w, offs_c, mask_c, mask = _program_tile(HW, W, C, TILES, BLOCK_P, BLOCK_C)
    y = _load_tile(y_ptr, n, h, w, offs_c, stride_yn, stride_yc, stride_yh, stride_yw, mask, True)
    centre = _load_channels(centre_ptr, n, offs_c, stride_mn, stride_mc, mask_c, HAS_CENTRE)
    scale = _load_channels(scale_ptr, n, offs_c, stride_sn, stride_sc, mask_c, HAS_SCALE)
    shift = _load_channels(shift_ptr, n, offs_c, stride_tn, stride_tc, mask_c, HAS_SHIFT)
    res = _load_tile(res_ptr, n, h, w, offs_c, stride_rn, stride_rc, stride_rh, stride_rw, mask, HAS_RESIDUAL)
    z = _pre_activation(y, centre, scale, shift, res, HAS_CENTRE, HAS_SCALE, HAS_SHIFT, HAS_RESIDUAL)
    z = activation(z, ACT, slope)
    o_off = _offsets(n, h, w, offs_c, stride_on, stride_oc, stride_oh, stride_ow)
    tl.store(out_ptr + o_off, z.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _affine_act_bwd_kernel(
    dout_ptr,         # (N, C, H, W) gradient of out, any strides
    out_ptr,          # (N, C, H, W) forward output (ACT != 0 and not MASK_FROM_Z)
    y_ptr,            # (N, C, H, W) forward input (HAS_DSCALE or MASK_FROM_Z)
    centre_ptr,       # (N, C) channel centre (HAS_CENTRE: for dscale, and for z under MASK_FROM_Z)
    scale_ptr,        # (N, C) channel scale (HAS_SCALE: for dy, dcentre, and for z under MASK_FROM_Z)
    shift_ptr,        # (N, C) channel shift (HAS_SHIFT, only read under MASK_FROM_Z)
    res_ptr,          # (N, C, H, W) residual (HAS_RESIDUAL, only read under MASK_FROM_Z)
    dy_ptr,           # (N, C, H, W) out: dz * scale (HAS_DY); strides "d"
    dres_ptr,         # (N, C, H, W) out: dz (HAS_DRES); strides "d"
    dscale_part_ptr,  # (N, TILES, C) float32 out: per-tile sums of dz * (y - centre) (HAS_DSCALE)
    dshift_part_ptr,  # (N, TILES, C) float32 out: per-tile sums of dz (HAS_DSHIFT)
    dcentre_part_ptr,  # (N, TILES, C) float32 out: per-tile sums of dz * scale, or dz without one (HAS_DCENTRE)
    slope,            # float: negative slope of leaky_relu (ACT == 2)
    C, W, HW, TILES,
    stride_gn, stride_gc, stride_gh, stride_gw,   # dout (g)
    stride_on, stride_oc, stride_oh, stride_ow,   # out
    stride_dn, stride_dc, stride_dh, stride_dw,   # dy, dres
    stride_yn, stride_yc, stride_yh, stride_yw,
    stride_mn, stride_mc,                         # centre (m)
    stride_sn, stride_sc, stride_tn, stride_tc,   # scale (s), shift (t)
    stride_rn, stride_rc, stride_rh, stride_rw,
    HAS_CENTRE: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    HAS_DY: tl.constexpr, HAS_DRES: tl.constexpr, HAS_DSCALE: tl.constexpr, HAS_DSHIFT: tl.constexpr,
    HAS_DCENTRE: tl.constexpr,
    ACT: tl.constexpr,
    MASK_FROM_Z: tl.constexpr,  # leaky_relu with slope < 0: the sign of out is not that of z
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, tile, h, w, offs_c, mask_c, mask = _program_tile(HW, W, C, TILES, BLOCK_P, BLOCK_C)
    # Masked lanes load dout = 0, so they add nothing to the partial sums below.
    dz = _load_tile(dout_ptr, n, h, w, offs_c, stride_gn, stride_gc, stride_gh, stride_gw, mask, True)
    scale = _load_channels(scale_ptr, n, offs_c, stride_sn, stride_sc, mask_c, HAS_SCALE)
    y = _load_tile(y_ptr, n, h, w, offs_c, stride_yn, stride_yc, stride_yh, stride_yw, mask, HAS_DSCALE or MASK_FROM_Z)
    centre = _load_channels(centre_ptr, n, offs_c, stride_mn, stride_mc, mask_c,
                            HAS_CENTRE and (HAS_DSCALE or MASK_FROM_Z))
    if ACT != 0:
        # torch's rule: relu's gradient is zero where its result is <= 0 (so a NaN passes it on);
        # leaky_relu takes the slope where its input is not > 0. For slope >= 0 the sign of the
        # output is that of the input (both give the slope branch at z == 0).
        if MASK_FROM_Z:
            shift = _load_channels(shift_ptr, n, offs_c, stride_tn, stride_tc, mask_c, HAS_SHIFT)
            res = _load_tile(res_ptr, n, h, w, offs_c, stride_rn, stride_rc, stride_rh, stride_rw, mask, HAS_RESIDUAL)
            sign_of = _pre_activation(y, centre, scale, shift, res, HAS_CENTRE, HAS_SCALE, HAS_SHIFT, HAS_RESIDUAL)
        else:
            sign_of = _load_tile(out_ptr, n, h, w, offs_c, stride_on, stride_oc, stride_oh, stride_ow, mask, True)
        dz = activation_grad(dz, sign_of, ACT, slope)
    d_off = _offsets(n, h, w, offs_c, stride_dn, stride_dc, stride_dh, stride_dw)
    if HAS_SCALE:
        dy = dz * scale[None, :]
    else:
        dy = dz
    if HAS_DY:
        tl.store(dy_ptr + d_off, dy.to(dy_ptr.dtype.element_ty), mask=mask)
    if HAS_DRES:
        tl.store(dres_ptr + d_off, dz.to(dres_ptr.dtype.element_ty), mask=mask)
    part_off = (n * TILES + tile) * C + offs_c
    if HAS_DSCALE:
        # Centred before the product, so that no mean * sum(dz) has to cancel out of the sum; the
        # lanes outside the tile stay 0 whatever the centre (an infinite one must not make 0 * inf).
        yc = y
        if HAS_CENTRE:
            yc = tl.where(mask, _centred(y, centre, HAS_CENTRE), 0.0)
        tl.store(dscale_part_ptr + part_off, tl.sum(dz * yc, axis=0), mask=mask_c)
    if HAS_DSHIFT:
        tl.store(dshift_part_ptr + part_off, tl.sum(dz, axis=0), mask=mask_c)
    if HAS_DCENTRE:
        # d(y - centre) = dy, summed as torch sums it (an infinite scale gives its NaN or infinity;
        # the lanes outside the tile, dz = 0, must not make 0 * inf). The launcher negates the sum.
        tl.store(dcentre_part_ptr + part_off, tl.sum(tl.where(mask, dy, 0.0), axis=0), mask=mask_c)
