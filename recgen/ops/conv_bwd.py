"""Backward of the convolution inside fused_conv2d: launchers of the data- and weight-gradient kernels.

Name chain: _conv2d_bwd_data_kernel / _conv2d_bwd_weight_kernel -> conv2d_bwd_data /
conv2d_bwd_weight -> torch.ops.recgen.conv2d_bwd_data / conv2d_bwd_weight (recgen/ops/library.py;
not differentiable) -> FusedConv2dFunction.backward (recgen/ops/fused_conv.py).

Both take dacc, the gradient of the conv accumulator acc (N, CO, OH, OW) of
recgen.reference.conv.fused_conv2d (the epilogue's backward is the caller's), and the forward's
geometry and prologue arguments. Glossary as in kernels/conv/bwd.py. Nothing uses atomics: partial
sums go to float32 buffers that torch sums, so results are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import triton
from torch import Tensor

from recgen.ops._launch import ACT_CODES, check_power_of_two, dot_flags, new_output, overriding, poisoned
from recgen.ops.tiles import MIN_DOT, launch_chosen, padded, tile_candidates
from recgen.ops.conv import conv_out_size
from recgen.ops.library import absent_like, define
from recgen.reference.conv import ACTIVATIONS, PADDING_MODES

STRIDES = (1, 2)
MAX_CHANNEL_BLOCK = 64
MAX_PIXEL_BLOCK = 64
TARGET_PROGRAMS = 512    # about four waves of an H100/H200's 132 SMs
MIN_CHUNKS_PER_SPLIT = 8  # a weight-gradient program reduces at least 8 * BLOCK_R positions

_forced: dict = {"split": None, "channel_block": None}


@dataclass(frozen=True)
class ConvBwdConfig:
    block_p: int    # input pixels per data-gradient program
    block_ci: int   # input channels per program (both kernels)
    block_co: int   # output channels per chunk (data) or per program (weight)
    block_r: int    # reduction positions per step of the weight-gradient loop
    split: int      # weight-gradient programs along the reduction N * OH * OW
    r_per_split: int


def conv_bwd_config(N: int, CI: int, CO: int, H: int, W: int, OH: int, OW: int, K: int) -> ConvBwdConfig:
    """Block sizes of both kernels and the weight gradient's reduction split.

    Rule: every block is the next power of two of its dimension, at least 16 (tl.dot), capped at
    64 (a 64 x 64 float32 accumulator per program). The weight gradient has only
    K*K * cdiv(CO, BLOCK_CO) * cdiv(CI, BLOCK_CI) output tiles, often too few programs to fill the
    GPU, so its reduction over R = N*OH*OW is split into SPLIT slices: enough to reach about
    TARGET_PROGRAMS programs, but never slices shorter than MIN_CHUNKS_PER_SPLIT steps of BLOCK_R
    (each split costs a float32 partial of dw). Slices are whole BLOCK_R steps; none is empty.
    """
    block_c = _forced["channel_block"] or MAX_CHANNEL_BLOCK
    block_ci, block_co = padded(CI, block_c), padded(CO, block_c)
    block_p = padded(H * W, MAX_PIXEL_BLOCK)
    R = N * OH * OW
    block_r = padded(R, 64)
    chunks = triton.cdiv(R, block_r)
    tiles = K * K * triton.cdiv(CO, block_co) * triton.cdiv(CI, block_ci)
    split = _forced["split"] or min(triton.cdiv(TARGET_PROGRAMS, tiles), chunks // MIN_CHUNKS_PER_SPLIT)
    split = max(1, min(split, chunks))
    per_split = triton.cdiv(max(chunks, 1), split)
    split = triton.cdiv(max(chunks, 1), per_split)
    return ConvBwdConfig(block_p, block_ci, block_co, block_r, split, per_split * block_r)


def forced_config(split: int | None = None, channel_block: int | None = None):
    """Force the weight gradient's split (at most one per BLOCK_R step) and cap the channel blocks
    of every conv backward launch in a with block; used by tests and bench."""
    if split is not None and split < 1:
        raise ValueError(f"split must be >= 1, got {split}")
    check_power_of_two("channel_block", channel_block, MIN_DOT)
    return overriding(_forced, split=split, channel_block=channel_block)


def _new_like(x: torch.Tensor) -> torch.Tensor:
    """An output with x's memory layout (channels-last stays channels-last), NaN-poisoned in tests."""
    return poisoned(torch.empty_like(x))


def _geometry(op, dacc, x, weight_shape, stride, padding_mode, upsample, in_act):
    """Check the arguments; return (N, CI, H, W, CO, K, OH, OW)."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"{op}: unknown padding_mode {padding_mode!r}; expected one of {PADDING_MODES}")
    if in_act not in ACT_CODES:
        raise ValueError(f"{op}: unknown in_act {in_act!r}; expected one of {ACTIVATIONS}")
    if stride not in STRIDES:
        raise ValueError(f"{op}: stride must be one of {STRIDES}, got {stride}")
    if x.dim() != 4 or dacc.dim() != 4 or len(weight_shape) != 4:
        raise RuntimeError(f"{op}: x, dacc and weight must be 4-D, got {x.dim()}, {dacc.dim()}, {len(weight_shape)}")
    N, CI, H, W = x.shape
    CO, CI_w, K, K2 = weight_shape
    if CI_w != CI or K != K2 or K % 2 == 0:
        raise RuntimeError(f"{op}: weight must be (CO, {CI}, K, K) with K odd, got {tuple(weight_shape)}")
    OH, OW = conv_out_size(H, K, stride, upsample), conv_out_size(W, K, stride, upsample)
    if tuple(dacc.shape) != (N, CO, OH, OW):
        raise RuntimeError(f"{op}: dacc must have shape {(N, CO, OH, OW)}, got {tuple(dacc.shape)}")
    if dacc.device != x.device:
        raise RuntimeError(f"{op}: dacc must be on {x.device} like x, got {dacc.device}")
    L = min(H, W) * (2 if upsample else 1)
    if padding_mode == "reflect" and K // 2 >= L:
        raise RuntimeError(f"{op}: reflect padding {K // 2} must be smaller than the input size {L}")
    return N, CI, H, W, CO, K, OH, OW


def _vector(op, name, t, shape, x):
    """A (N, CI) prologue tensor as float32 contiguous, or x as a dummy pointer."""
    if t is None:
        return x
    if tuple(t.shape) != shape:
        raise RuntimeError(f"{op}: {name} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != x.device:
        raise RuntimeError(f"{op}: {name} must be on {x.device} like x, got {t.device}")
    return t.detach().to(torch.float32).contiguous()


def _flags(stride, padding_mode, upsample, in_scale, in_shift, in_act, K):
    return dict(K=K, STRIDE=stride, UPSAMPLE=bool(upsample), REFLECT=padding_mode == "reflect",
                HAS_IN_SCALE=in_scale is not None, HAS_IN_SHIFT=in_shift is not None,
                IN_ACT=ACT_CODES[in_act])


def conv2d_bwd_data(dacc, x, weight, *, stride=1, padding_mode="zeros", upsample=False,
                    in_scale=None, in_shift=None, in_act="none", in_slope=0.01):
    """Gradients of fused_conv2d's accumulator with respect to x and the prologue's scale and shift.

    dacc: (N, CO, OH, OW); x: (N, CI, H, W); weight: (CO, CI, K, K); in_scale, in_shift: (N, CI)
    or None. Any memory layouts. Returns dx (N, CI, H, W) in x's dtype and x's layout, and
    d_in_scale, d_in_shift (N, CI) float32, each None when the tensor is None.
    Example: dx, _, _ = conv2d_bwd_data(dacc, x, w, stride=2, padding_mode="reflect").
    """
    from recgen.kernels.conv.bwd import _conv2d_bwd_data_kernel

    op = "conv2d_bwd_data"
    N, CI, H, W, CO, K, OH, OW = _geometry(op, dacc, x, weight.shape, stride, padding_mode, upsample, in_act)
    scale = _vector(op, "in_scale", in_scale, (N, CI), x)
    shift = _vector(op, "in_shift", in_shift, (N, CI), x)
    cfg = conv_bwd_config(N, CI, CO, H, W, OH, OW, K)
    npt = triton.cdiv(H * W, cfg.block_p)
    dx = _new_like(x)
    dscale = new_output((N, npt, CI), torch.float32, x.device) if in_scale is not None else None
    dshift = new_output((N, npt, CI), torch.float32, x.device) if in_shift is not None else None
    w_t = weight.detach().permute(2, 3, 0, 1).contiguous()  # (K, K, CO, CI)
    launch_chosen(
        op, _conv2d_bwd_data_kernel,
        tile_candidates("conv_bwd_data", BLOCK_P=cfg.block_p, BLOCK_CI=cfg.block_ci, BLOCK_CO=cfg.block_co),
        (npt, triton.cdiv(CI, cfg.block_ci), N),
        dacc_ptr=dacc, w_ptr=w_t, x_ptr=x, in_scale_ptr=scale, in_shift_ptr=shift, dx_ptr=dx,
        dscale_ptr=dx if dscale is None else dscale, dshift_ptr=dx if dshift is None else dshift,
        CI=CI, CO=CO, H=H, W=W, OH=OH, OW=OW, NPT=npt,
        stride_dn=dacc.stride(0), stride_dc=dacc.stride(1), stride_dh=dacc.stride(2), stride_dw=dacc.stride(3),
        stride_xn=x.stride(0), stride_xc=x.stride(1), stride_xh=x.stride(2), stride_xw=x.stride(3),
        stride_gn=dx.stride(0), stride_gc=dx.stride(1), stride_gh=dx.stride(2), stride_gw=dx.stride(3),
        in_slope=float(in_slope), **_flags(stride, padding_mode, upsample, in_scale, in_shift, in_act, K),
        **dot_flags(weight.dtype, "conv"),
    )
    return (dx, dscale.sum(dim=1) if dscale is not None else None,
            dshift.sum(dim=1) if dshift is not None else None)


def conv2d_bwd_weight(dacc, x, weight_shape, *, stride=1, padding_mode="zeros", upsample=False,
                      in_scale=None, in_shift=None, in_act="none", in_slope=0.01):
    """Gradient of fused_conv2d's accumulator with respect to the weight.

    dacc: (N, CO, OH, OW); x: (N, CI, H, W), the forward's input (the prologue is recomputed);
    weight_shape: (CO, CI, K, K); in_scale, in_shift: (N, CI) or None. Any memory layouts.
    Returns dw (CO, CI, K, K), accumulated in float32 and cast to x's dtype.
    Example: dw = conv2d_bwd_weight(dacc, x, w.shape, upsample=True, in_act="relu").
    """
    from recgen.kernels.conv.bwd import _conv2d_bwd_weight_kernel

    op = "conv2d_bwd_weight"
    N, CI, H, W, CO, K, OH, OW = _geometry(op, dacc, x, tuple(weight_shape), stride, padding_mode, upsample,
                                           in_act)
    scale = _vector(op, "in_scale", in_scale, (N, CI), x)
    shift = _vector(op, "in_shift", in_shift, (N, CI), x)
    cfg = conv_bwd_config(N, CI, CO, H, W, OH, OW, K)
    parts = new_output((cfg.split, CO, CI, K, K), torch.float32, x.device)
    tiles = triton.cdiv(CO, cfg.block_co) * triton.cdiv(CI, cfg.block_ci)
    launch_chosen(
        op, _conv2d_bwd_weight_kernel,
        tile_candidates("conv_bwd_weight", BLOCK_CO=cfg.block_co, BLOCK_CI=cfg.block_ci, BLOCK_R=cfg.block_r),
        (tiles, K * K, cfg.split),
        dacc_ptr=dacc, x_ptr=x, in_scale_ptr=scale, in_shift_ptr=shift, dw_ptr=parts,
        CI=CI, CO=CO, H=H, W=W, OH=OH, OW=OW, R=N * OH * OW, R_PER_SPLIT=cfg.r_per_split,
        stride_dn=dacc.stride(0), stride_dc=dacc.stride(1), stride_dh=dacc.stride(2), stride_dw=dacc.stride(3),
        stride_xn=x.stride(0), stride_xc=x.stride(1), stride_xh=x.stride(2), stride_xw=x.stride(3),
        in_slope=float(in_slope), **_flags(stride, padding_mode, upsample, in_scale, in_shift, in_act, K),
        **dot_flags(x.dtype, "conv"),
    )
    if cfg.split == 1:  # a copy, not a view of the scratch buffer (op outputs must be fresh)
        return parts[0].to(x.dtype, copy=True)
    return parts.sum(dim=0).to(x.dtype)


# torch.library registration (recgen/ops/library.py). The ops are not differentiable: they are
# FusedConv2dFunction's backward. Absent prologue gradients come back as absent_like(x).
# Integers are SymInt: triton_op infers the schema from the annotations, and `int` there means SymInt.
_BWD_ARGS = ("Tensor? in_scale, Tensor? in_shift, SymInt stride, str padding_mode, bool upsample, "
             "str in_act, float in_slope")


def _conv2d_bwd_data_fake(dacc, x, weight, in_scale, in_shift, stride, padding_mode, upsample, in_act,
                          in_slope):
    op = "conv2d_bwd_data"
    N, CI = _geometry(op, dacc, x, weight.shape, stride, padding_mode, upsample, in_act)[:2]
    _vector(op, "in_scale", in_scale, (N, CI), x)
    _vector(op, "in_shift", in_shift, (N, CI), x)
    vector = (lambda t: absent_like(x) if t is None else x.new_empty((N, CI), dtype=torch.float32))
    return torch.empty_like(x), vector(in_scale), vector(in_shift)


@define("conv2d_bwd_data", f"(Tensor dacc, Tensor x, Tensor weight, {_BWD_ARGS}) -> (Tensor, Tensor, Tensor)",
        _conv2d_bwd_data_fake)
def conv2d_bwd_data_op(dacc: Tensor, x: Tensor, weight: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
                       stride: int, padding_mode: str, upsample: bool, in_act: str, in_slope: float
                       ) -> Tuple[Tensor, Tensor, Tensor]:
    """torch.ops.recgen.conv2d_bwd_data: conv2d_bwd_data with empty tensors for the gradients of
    an absent in_scale / in_shift. Returns dx (like x), d_in_scale, d_in_shift (N, CI) float32."""
    dx, d_scale, d_shift = conv2d_bwd_data(dacc, x, weight, stride=stride, padding_mode=padding_mode,
                                           upsample=upsample, in_scale=in_scale, in_shift=in_shift,
                                           in_act=in_act, in_slope=in_slope)
    return (dx, absent_like(x) if d_scale is None else d_scale, absent_like(x) if d_shift is None else d_shift)


def _conv2d_bwd_weight_fake(dacc, x, weight_shape, in_scale, in_shift, stride, padding_mode, upsample, in_act,
                            in_slope):
    op = "conv2d_bwd_weight"
    N, CI = _geometry(op, dacc, x, tuple(weight_shape), stride, padding_mode, upsample, in_act)[:2]
    _vector(op, "in_scale", in_scale, (N, CI), x)
    _vector(op, "in_shift", in_shift, (N, CI), x)
    return x.new_empty(tuple(weight_shape))


@define("conv2d_bwd_weight", f"(Tensor dacc, Tensor x, SymInt[] weight_shape, {_BWD_ARGS}) -> Tensor",
        _conv2d_bwd_weight_fake)
def conv2d_bwd_weight_op(dacc: Tensor, x: Tensor, weight_shape: List[int], in_scale: Optional[Tensor],
                         in_shift: Optional[Tensor], stride: int, padding_mode: str, upsample: bool, in_act: str,
                         in_slope: float) -> Tensor:
    """torch.ops.recgen.conv2d_bwd_weight: conv2d_bwd_weight; dw (CO, CI, K, K) in x's dtype."""
    return conv2d_bwd_weight(dacc, x, weight_shape, stride=stride, padding_mode=padding_mode, upsample=upsample,
                             in_scale=in_scale, in_shift=in_shift, in_act=in_act, in_slope=in_slope)
