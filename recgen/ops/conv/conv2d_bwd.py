"""Backward of the convolution inside fused_conv2d: launchers of the data- and weight-gradient kernels.

Name chain: _conv2d_bwd_data_kernel / _conv2d_bwd_weight_kernel (kernels/conv/bwd.py) ->
conv2d_bwd_data / conv2d_bwd_weight -> torch.ops.recgen.conv2d_bwd_data / conv2d_bwd_weight (not
differentiable) -> FusedConv2dFunction.backward (recgen/ops/conv/conv2d.py).

Both take dacc, the gradient of the conv accumulator acc (N, CO, OH, OW) of
recgen.reference.conv.fused_conv2d (the epilogue's backward is the caller's), and the forward's
geometry and prologue arguments. Glossary as in kernels/conv/bwd.py. Nothing uses atomics: partial
sums go to float32 buffers that torch sums, so results are deterministic.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
from torch import Tensor

from recgen.ops.common.launch import ACT_CODES, dot_flags, new_output, poisoned
from recgen.ops.common.library import missing_output, register_op
from recgen.ops.common.tiling import conv_bwd_config, launch_chosen
from recgen.ops.conv.geometry import STRIDES, conv_out_size
from recgen.reference.conv import ACTIVATIONS, PADDING_MODES

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


def _flags(stride, padding_mode, upsample, in_centre, in_scale, in_shift, in_act, K):
    return dict(K=K, STRIDE=stride, UPSAMPLE=bool(upsample), REFLECT=padding_mode == "reflect",
                HAS_IN_CENTRE=in_centre is not None, HAS_IN_SCALE=in_scale is not None,
                HAS_IN_SHIFT=in_shift is not None,
                IN_ACT=ACT_CODES[in_act])


def conv2d_bwd_data(dacc, x, weight, *, stride=1, padding_mode="zeros", upsample=False,
                    in_scale=None, in_shift=None, in_act="none", in_slope=0.01, in_centre=None):
    """Gradients of fused_conv2d's accumulator with respect to x and the prologue's scale and shift.

    dacc: (N, CO, OH, OW); x: (N, CI, H, W); weight: (CO, CI, K, K); in_centre, in_scale,
    in_shift: (N, CI) or None. Any memory layouts. Returns dx (N, CI, H, W) in x's dtype and x's
    layout, and d_in_scale, d_in_shift, d_in_centre (N, CI) float32, each None when the tensor is
    None.
    Example: dx, _, _, _ = conv2d_bwd_data(dacc, x, w, stride=2, padding_mode="reflect").
    """
    from recgen.kernels.conv.bwd import _conv2d_bwd_data_kernel

    op = "conv2d_bwd_data"
    N, CI, H, W, CO, K, OH, OW = _geometry(op, dacc, x, weight.shape, stride, padding_mode, upsample, in_act)
    centre = _vector(op, "in_centre", in_centre, (N, CI), x)
    scale = _vector(op, "in_scale", in_scale, (N, CI), x)
    shift = _vector(op, "in_shift", in_shift, (N, CI), x)
    cfg = conv_bwd_config(N, CI, CO, H, W, OH, OW, K)
    npt = triton.cdiv(H * W, cfg.block_p)
    dx = _new_like(x)
    dscale = new_output((N, npt, CI), torch.float32, x.device) if in_scale is not None else None
    dshift = new_output((N, npt, CI), torch.float32, x.device) if in_shift is not None else None
    dcentre = new_output((N, npt, CI), torch.float32, x.device) if in_centre is not None else None
    w_t = weight.detach().permute(2, 3, 0, 1).contiguous()  # (K, K, CO, CI)
    launch_chosen(
        op, _conv2d_bwd_data_kernel,
        cfg.data_tiles(),
        (npt, triton.cdiv(CI, cfg.block_ci), N),
        dacc_ptr=dacc, w_ptr=w_t, x_ptr=x, in_centre_ptr=centre, in_scale_ptr=scale, in_shift_ptr=shift, dx_ptr=dx,
        dscale_ptr=dx if dscale is None else dscale, dshift_ptr=dx if dshift is None else dshift,
        dcentre_ptr=dx if dcentre is None else dcentre,
        CI=CI, CO=CO, H=H, W=W, OH=OH, OW=OW, NPT=npt,
        stride_dn=dacc.stride(0), stride_dc=dacc.stride(1), stride_dh=dacc.stride(2), stride_dw=dacc.stride(3),
        stride_xn=x.stride(0), stride_xc=x.stride(1), stride_xh=x.stride(2), stride_xw=x.stride(3),
        stride_gn=dx.stride(0), stride_gc=dx.stride(1), stride_gh=dx.stride(2), stride_gw=dx.stride(3),
        in_slope=float(in_slope), **_flags(stride, padding_mode, upsample, in_centre, in_scale, in_shift, in_act, K),
        **dot_flags(weight.dtype, "conv"),
    )
    # The pixel tiles' partial sums added in float64 (small (N, NPT, CI) tensors): a norm's
    # backward subtracts these sums from per-pixel terms of their size. pre = (x - centre) * scale
    # + shift: d centre = -sum d_pre * scale, the kernel's sums negated.
    return (dx, _tile_sum(dscale), _tile_sum(dshift), None if dcentre is None else _tile_sum(dcentre).neg_())


def _tile_sum(part):
    """(N, CI) float32 sums of per-tile partials (N, tiles, CI), added in float64; None stays None."""
    return None if part is None else part.sum(dim=1, dtype=torch.float64).to(torch.float32)


def conv2d_bwd_weight(dacc, x, weight_shape, *, stride=1, padding_mode="zeros", upsample=False,
                      in_scale=None, in_shift=None, in_act="none", in_slope=0.01, in_centre=None):
    """Gradient of fused_conv2d's accumulator with respect to the weight.

    dacc: (N, CO, OH, OW); x: (N, CI, H, W), the forward's input (the prologue is recomputed);
    weight_shape: (CO, CI, K, K); in_centre, in_scale, in_shift: (N, CI) or None. Any memory layouts.
    Returns dw (CO, CI, K, K), accumulated in float32 and cast to x's dtype.
    Example: dw = conv2d_bwd_weight(dacc, x, w.shape, upsample=True, in_act="relu").
    """
    from recgen.kernels.conv.bwd import _conv2d_bwd_weight_kernel

    op = "conv2d_bwd_weight"
    N, CI, H, W, CO, K, OH, OW = _geometry(op, dacc, x, tuple(weight_shape), stride, padding_mode, upsample,
                                           in_act)
    centre = _vector(op, "in_centre", in_centre, (N, CI), x)
    scale = _vector(op, "in_scale", in_scale, (N, CI), x)
    shift = _vector(op, "in_shift", in_shift, (N, CI), x)
    cfg = conv_bwd_config(N, CI, CO, H, W, OH, OW, K)
    parts = new_output((cfg.split, CO, CI, K, K), torch.float32, x.device)
    tiles = triton.cdiv(CO, cfg.block_co) * triton.cdiv(CI, cfg.block_ci)
    launch_chosen(
        op, _conv2d_bwd_weight_kernel,
        cfg.weight_tiles(),
        (tiles, K * K, cfg.split),
        dacc_ptr=dacc, x_ptr=x, in_centre_ptr=centre, in_scale_ptr=scale, in_shift_ptr=shift, dw_ptr=parts,
        CI=CI, CO=CO, H=H, W=W, OH=OH, OW=OW, R=N * OH * OW, R_PER_SPLIT=cfg.r_per_split,
        stride_dn=dacc.stride(0), stride_dc=dacc.stride(1), stride_dh=dacc.stride(2), stride_dw=dacc.stride(3),
        stride_xn=x.stride(0), stride_xc=x.stride(1), stride_xh=x.stride(2), stride_xw=x.stride(3),
        in_slope=float(in_slope), **_flags(stride, padding_mode, upsample, in_centre, in_scale, in_shift, in_act, K),
        **dot_flags(x.dtype, "conv"),
    )
    if cfg.split == 1:  # a copy, not a view of the scratch buffer (op outputs must be fresh)
        return parts[0].to(x.dtype, copy=True)
    return parts.sum(dim=0).to(x.dtype)


# torch.library registration (recgen/ops/common/library.py). The ops are not differentiable: they are
# FusedConv2dFunction's backward. Absent prologue gradients come back as missing_output(x).
# Integers are SymInt: triton_op infers the schema from the annotations, and `int` there means SymInt.
# in_centre comes last (added later, with a default: calls written before it keep their meaning).
_BWD_ARGS = ("Tensor? in_scale, Tensor? in_shift, SymInt stride, str padding_mode, bool upsample, "
             "str in_act, float in_slope, Tensor? in_centre=None")


def _conv2d_bwd_data_fake(dacc, x, weight, in_scale, in_shift, stride, padding_mode, upsample, in_act,
                          in_slope, in_centre=None):
    op = "conv2d_bwd_data"
    N, CI = _geometry(op, dacc, x, weight.shape, stride, padding_mode, upsample, in_act)[:2]
    for name, t in (("in_centre", in_centre), ("in_scale", in_scale), ("in_shift", in_shift)):
        _vector(op, name, t, (N, CI), x)
    vector = (lambda t: missing_output(x) if t is None else x.new_empty((N, CI), dtype=torch.float32))
    return torch.empty_like(x), vector(in_scale), vector(in_shift), vector(in_centre)


@register_op("conv2d_bwd_data",
             f"(Tensor dacc, Tensor x, Tensor weight, {_BWD_ARGS}) -> (Tensor, Tensor, Tensor, Tensor)",
        _conv2d_bwd_data_fake)
def conv2d_bwd_data_op(dacc: Tensor, x: Tensor, weight: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
                       stride: int, padding_mode: str, upsample: bool, in_act: str, in_slope: float,
                       in_centre: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """torch.ops.recgen.conv2d_bwd_data: conv2d_bwd_data with empty tensors for the gradients of
    an absent in_scale / in_shift / in_centre. Returns dx (like x), d_in_scale, d_in_shift,
    d_in_centre (N, CI) float32."""
    grads = conv2d_bwd_data(dacc, x, weight, stride=stride, padding_mode=padding_mode,
                                           upsample=upsample, in_scale=in_scale, in_shift=in_shift,
                                           in_act=in_act, in_slope=in_slope, in_centre=in_centre)
    return tuple(missing_output(x) if g is None else g for g in grads)


def _conv2d_bwd_weight_fake(dacc, x, weight_shape, in_scale, in_shift, stride, padding_mode, upsample, in_act,
                            in_slope, in_centre=None):
    op = "conv2d_bwd_weight"
    N, CI = _geometry(op, dacc, x, tuple(weight_shape), stride, padding_mode, upsample, in_act)[:2]
    for name, t in (("in_centre", in_centre), ("in_scale", in_scale), ("in_shift", in_shift)):
        _vector(op, name, t, (N, CI), x)
    return x.new_empty(tuple(weight_shape))


@register_op("conv2d_bwd_weight", f"(Tensor dacc, Tensor x, SymInt[] weight_shape, {_BWD_ARGS}) -> Tensor",
        _conv2d_bwd_weight_fake)
def conv2d_bwd_weight_op(dacc: Tensor, x: Tensor, weight_shape: List[int], in_scale: Optional[Tensor],
                         in_shift: Optional[Tensor], stride: int, padding_mode: str, upsample: bool, in_act: str,
                         in_slope: float, in_centre: Optional[Tensor] = None) -> Tensor:
    """torch.ops.recgen.conv2d_bwd_weight: conv2d_bwd_weight; dw (CO, CI, K, K) in x's dtype."""
    return conv2d_bwd_weight(dacc, x, weight_shape, stride=stride, padding_mode=padding_mode, upsample=upsample,
                             in_scale=in_scale, in_shift=in_shift, in_act=in_act, in_slope=in_slope,
                             in_centre=in_centre)
