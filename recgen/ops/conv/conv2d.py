"""The fused convolution of residual blocks: the forward launcher, its torch.library op and the
autograd Function.

Name chain, as called: _conv2d_fwd_kernel (kernels/conv/fwd.py) -> conv2d_fwd ->
torch.ops.recgen.fused_conv2d (fused_conv2d_op; its autograd: FusedConv2dFunction) ->
recgen.functional.fused_conv2d -> recgen.functional.residual_block -> recgen.nn.ResidualBlock.
Backward: FusedConv2dFunction.backward -> torch.ops.recgen.affine_act_bwd (the epilogue,
recgen/ops/conv/affine.py), torch.ops.recgen.conv2d_bwd_data and conv2d_bwd_weight
(recgen/ops/conv/conv2d_bwd.py).

conv2d_fwd has exactly the contract of recgen.reference.conv.fused_conv2d (same arguments, same
return values), restricted to what the kernel supports: odd K, stride 1 or 2,
float32/float16/bfloat16 data. Arguments are checked before anything is launched (check_conv2d_fwd,
which the op's fake implementation runs too, so torch.compile raises the same errors while
tracing). The op always returns (out, sum, m2), sum and m2 empty when stats=False; ConvSpec,
the non-tensor arguments, is passed to it as primitives. Backward passes over memory: the
epilogue's backward (activation, scale, shift, residual: affine_act's backward kernel, writing dacc
and the per-channel sums; a torch elementwise pass when the statistics' gradient enters), the data-
gradient kernel (with the prologue's backward fused in), the weight-gradient kernel, and, only when
out_scale needs a gradient, a recompute of the un-scaled conv (saves memory).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Optional, Tuple

import torch
import triton
from torch import Tensor

from recgen.ops.common.checks import check_residual
from recgen.ops.common.launch import ACT_CODES, dot_flags, new_output
from recgen.ops.common.library import missing_output, register_op, register_function
from recgen.ops.common.tiling import conv_blocks, conv_tiles, launch_chosen
from recgen.ops.conv import conv2d_bwd  # noqa: F401  registers torch.ops.recgen.conv2d_bwd_data/_weight
from recgen.ops.conv.affine import affine_act_grads
from recgen.ops.conv.geometry import DTYPES, check_options, conv_out_size

def _check_vector(name, t, shape, x):
    """Raise unless t is None or a floating-point `shape` tensor on x's device."""
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"conv2d_fwd: {name} must be a tensor or None, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise RuntimeError(f"conv2d_fwd: {name} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != x.device:
        raise RuntimeError(f"conv2d_fwd: {name} must be on {x.device} like x, got {t.device}")
    if not t.is_floating_point():
        raise RuntimeError(f"conv2d_fwd: {name} must be floating point, got {t.dtype}")


def _float32(t):
    return None if t is None else t.detach().to(torch.float32).contiguous()


def check_conv2d_fwd(x, weight, stride, padding_mode, upsample, in_scale, in_shift, in_act,
                     out_scale, out_shift, residual, out_act, in_centre=None):
    """Check conv2d_fwd's arguments (metadata only, so it runs on fake tensors too); returns
    (N, CI, H, W, CO, K, OH, OW)."""
    check_options(stride, padding_mode, in_act, out_act)
    if x.dim() != 4:
        raise RuntimeError(f"conv2d_fwd: x must be 4-D (N, CI, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
        raise RuntimeError("conv2d_fwd: weight must be (CO, CI, K, K) with K odd, "
                           f"got shape {tuple(weight.shape)}")
    N, CI, H, W = x.shape
    CO, K = weight.shape[0], weight.shape[2]
    if weight.shape[1] != CI:
        raise RuntimeError(f"conv2d_fwd: weight must have CI={CI} input channels like x, "
                           f"got shape {tuple(weight.shape)}")
    if x.dtype not in DTYPES:
        raise RuntimeError(f"conv2d_fwd: x must be one of {DTYPES}, got {x.dtype}")
    if weight.dtype != x.dtype:
        raise RuntimeError(f"conv2d_fwd: weight must have x's dtype {x.dtype}, got {weight.dtype}")
    if weight.device != x.device:
        raise RuntimeError(f"conv2d_fwd: weight must be on {x.device} like x, got {weight.device}")
    if padding_mode == "reflect":
        for dim, S in (("H", H), ("W", W)):
            L = 2 * S if upsample else S
            if K // 2 >= L:
                raise RuntimeError(f"conv2d_fwd: reflect padding {K // 2} (K={K}) must be smaller than "
                                   f"the {'upsampled ' if upsample else ''}input size {dim}={L}")
    OH, OW = conv_out_size(H, K, stride, upsample), conv_out_size(W, K, stride, upsample)
    _check_vector("in_centre", in_centre, (N, CI), x)
    _check_vector("in_scale", in_scale, (N, CI), x)
    _check_vector("in_shift", in_shift, (N, CI), x)
    _check_vector("out_scale", out_scale, (CO,), x)
    _check_vector("out_shift", out_shift, (CO,), x)
    if residual is not None:
        check_residual("conv2d_fwd", residual, (N, CO, OH, OW), x, DTYPES)
    return N, CI, H, W, CO, K, OH, OW


def conv2d_fwd(x, weight, *, stride=1, padding_mode="zeros", upsample=False,
               in_scale=None, in_shift=None, in_act="none", in_slope=0.01,
               out_scale=None, out_shift=None, residual=None, out_act="none", out_slope=0.01,
               stats=False, in_centre=None):
    """Fused conv2d forward in one launch; same contract as recgen.reference.conv.fused_conv2d.

    x: (N, CI, H, W) float32/float16/bfloat16, any memory layout; weight: (CO, CI, K, K), K odd,
    same dtype and device; in_centre/in_scale/in_shift: (N, CI) or None (the prologue
    act_in((x - in_centre) * in_scale + in_shift)); out_scale/out_shift: (CO,) or None;
    residual: (N, CO, OH, OW) or None, any layout; stride 1 or 2.
    Returns out (N, CO, OH, OW) in x's dtype, channels_last, and with stats=True also
    (sum, m2) of z over each image's output pixels, each (N, CO) float32: its sum and its sum of
    squared deviations from its mean (merged_statistics).
    Unknown padding_mode/activation names and unsupported strides raise ValueError (as the
    reference does for names); shapes, dtypes, devices and a reflect pad >= the (upsampled)
    input size raise RuntimeError (as torch does).

    Example: out, s, m2 = conv2d_fwd(x, w, in_scale=a, in_shift=b, in_act="relu", stats=True)
    """
    from recgen.kernels.conv.fwd import _conv2d_fwd_kernel

    N, CI, H, W, CO, K, OH, OW = check_conv2d_fwd(x, weight, stride, padding_mode, upsample, in_scale,
                                                  in_shift, in_act, out_scale, out_shift, residual, out_act,
                                                  in_centre)
    in_centre, in_scale, in_shift, out_scale, out_shift = map(
        _float32, (in_centre, in_scale, in_shift, out_scale, out_shift))
    block_m, _, block_co, _ = conv_blocks(OH * OW, CI, CO)
    tiles = triton.cdiv(OH * OW, block_m)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    w_kkio = weight.permute(2, 3, 1, 0).contiguous()  # (K, K, CI, CO): rows of B are (tap, ci)
    # channels_last output: (N, OH, OW, CO) storage seen as (N, CO, OH, OW); NaN-poisoned in tests.
    out = new_output((N, OH, OW, CO), x.dtype, x.device).permute(0, 3, 1, 2)
    if stats:
        part_pivot, part_sum, part_m2 = (new_output((N, tiles, CO), torch.float32, x.device) for _ in range(3))
    dummy = out  # never read: its HAS_* flag is off
    res = residual if residual is not None else out
    launch_chosen(
        "conv2d_fwd", _conv2d_fwd_kernel, conv_tiles(OH * OW, CI, CO), (N * tiles, triton.cdiv(CO, block_co)),
        x_ptr=x_cl, w_ptr=w_kkio,
        in_centre_ptr=in_centre if in_centre is not None else dummy,
        in_scale_ptr=in_scale if in_scale is not None else dummy,
        in_shift_ptr=in_shift if in_shift is not None else dummy,
        out_scale_ptr=out_scale if out_scale is not None else dummy,
        out_shift_ptr=out_shift if out_shift is not None else dummy,
        res_ptr=res, out_ptr=out,
        pivot_ptr=part_pivot if stats else dummy, sum_ptr=part_sum if stats else dummy,
        m2_ptr=part_m2 if stats else dummy,
        CI=CI, H=H, W=W, CO=CO, OH=OH, OW=OW, TILES=tiles,
        stride_xn=x_cl.stride(0), stride_xc=x_cl.stride(1), stride_xh=x_cl.stride(2), stride_xw=x_cl.stride(3),
        stride_rn=res.stride(0), stride_rc=res.stride(1), stride_rh=res.stride(2), stride_rw=res.stride(3),
        stride_on=out.stride(0), stride_oc=out.stride(1), stride_oh=out.stride(2), stride_ow=out.stride(3),
        in_slope=float(in_slope), out_slope=float(out_slope),
        K=K, STRIDE=stride, UPSAMPLE=bool(upsample), REFLECT=padding_mode == "reflect",
        HAS_IN_CENTRE=in_centre is not None, HAS_IN_SCALE=in_scale is not None,
        HAS_IN_SHIFT=in_shift is not None, IN_ACT=ACT_CODES[in_act],
        HAS_OUT_SCALE=out_scale is not None, HAS_OUT_SHIFT=out_shift is not None,
        HAS_RESIDUAL=residual is not None, OUT_ACT=ACT_CODES[out_act], STATS=bool(stats),
        **dot_flags(x.dtype, "conv"),
    )
    if not stats:
        return out
    return (out, *merged_statistics(part_pivot, part_sum, part_m2, OH * OW, block_m))


def merged_statistics(part_pivot, part_sum, part_m2, pixels: int, block_m: int) -> tuple:
    """(sum, M2) of z per (image, channel), (N, CO) float64, from the kernel's per-tile partials
    (N, TILES, CO) of tiles of BLOCK_M pixels (the last one shorter): each tile's mean is its
    pivot + its shifted sum / count, and Chan's parallel formula merges them, M2 = sum of the
    tiles' M2 + sum of count_t * (mean_t - mean)^2 (every term non-negative), in float64 on
    these small tensors: float32 means would lose the differences between tiles (and images, in
    a BatchNorm) when the mean is large against the spread. Fixed order: deterministic."""
    tiles = part_sum.shape[1]
    counts = (pixels - block_m * torch.arange(tiles, device=part_sum.device)).clamp(max=block_m)
    counts = counts.to(torch.float64)[None, :, None]
    tile_mean = part_pivot.to(torch.float64) + part_sum.to(torch.float64) / counts
    z_sum = (counts * tile_mean).sum(dim=1)
    between = (counts * (tile_mean - (z_sum / pixels)[:, None, :]).square()).sum(dim=1)
    return z_sum, part_m2.to(torch.float64).sum(dim=1) + between


@dataclass(frozen=True)
class ConvSpec:
    """The non-tensor arguments of fused_conv2d, in the order of torch.ops.recgen.fused_conv2d's
    (they end its argument list: astuple(spec))."""
    stride: int = 1
    padding_mode: str = "zeros"
    upsample: bool = False
    in_act: str = "none"
    in_slope: float = 0.01
    out_act: str = "none"
    out_slope: float = 0.01
    stats: bool = False

    def geometry(self) -> tuple:
        return self.stride, self.padding_mode, self.upsample

    def prologue(self) -> tuple:
        return self.in_act, self.in_slope


_STATS_ACT = "fused_conv2d: stats are of the pre-activation; use out_act='none' with stats=True"


def _check_stats(out_act, stats):
    if stats and out_act != "none":
        raise ValueError(_STATS_ACT)


def _fused_conv2d_fake(x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride, padding_mode,
                       upsample, in_act, in_slope, out_act, out_slope, stats, in_centre=None):
    _check_stats(out_act, stats)
    N, _, _, _, CO, _, OH, OW = check_conv2d_fwd(x, weight, stride, padding_mode, upsample, in_scale, in_shift,
                                                 in_act, out_scale, out_shift, residual, out_act, in_centre)
    out = x.new_empty((N, OH, OW, CO)).permute(0, 3, 1, 2)  # channels_last, as conv2d_fwd's
    if not stats:
        return out, missing_output(x), missing_output(x)
    return out, x.new_empty((N, CO), dtype=torch.float64), x.new_empty((N, CO), dtype=torch.float64)


# stride is a SymInt: triton_op infers the schema from the annotations, where `int` means SymInt.
@register_op("fused_conv2d", "(Tensor x, Tensor weight, Tensor? in_scale, Tensor? in_shift, Tensor? out_scale, "
        "Tensor? out_shift, Tensor? residual, SymInt stride, str padding_mode, bool upsample, str in_act, "
        "float in_slope, str out_act, float out_slope, bool stats, Tensor? in_centre=None) "
        "-> (Tensor, Tensor, Tensor)",
        _fused_conv2d_fake)
def fused_conv2d_op(x: Tensor, weight: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
                    out_scale: Optional[Tensor], out_shift: Optional[Tensor], residual: Optional[Tensor], stride: int,
                    padding_mode: str, upsample: bool, in_act: str, in_slope: float, out_act: str, out_slope: float,
                    stats: bool, in_centre: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """torch.ops.recgen.fused_conv2d: conv2d_fwd returning (out, sum, m2) always, sum and m2
    empty when stats=False; differentiable in every tensor (FusedConv2dFunction). in_centre comes
    last (a later addition, with a default, so calls written before it keep their meaning)."""
    _check_stats(out_act, stats)
    result = conv2d_fwd(x, weight, stride=stride, padding_mode=padding_mode, upsample=upsample,
                        in_scale=in_scale, in_shift=in_shift, in_act=in_act, in_slope=in_slope,
                        out_scale=out_scale, out_shift=out_shift, residual=residual, out_act=out_act,
                        out_slope=out_slope, stats=stats, in_centre=in_centre)
    return result if stats else (result, missing_output(x), missing_output(x))


class FusedConv2dFunction(torch.autograd.Function):
    """out, sum, m2 = fused_conv2d(x, weight, ...); see recgen.reference.conv.fused_conv2d.
    The autograd of torch.ops.recgen.fused_conv2d (registered below); inputs as the op's:
    x, weight, in_scale, in_shift, out_scale, out_shift, residual, ConvSpec's fields, in_centre."""

    @staticmethod
    def forward(x, weight, in_scale, in_shift, out_scale, out_shift, residual, *options_and_centre):
        return torch.ops.recgen.fused_conv2d(x, weight, in_scale, in_shift, out_scale, out_shift, residual,
                                             *options_and_centre)

    @staticmethod
    def setup_context(ctx, inputs, output):
        # The op's autograd gets every argument of the schema (defaults filled in); a direct
        # FusedConv2dFunction.apply may leave out the trailing in_centre.
        x, weight, in_scale, in_shift, out_scale, out_shift, residual = inputs[:7]
        options, in_centre = inputs[7:7 + _SPEC_FIELDS], (*inputs[7 + _SPEC_FIELDS:], None)[0]
        out, z_sum, z_m2 = output
        # residual is saved only for its dtype and for leaky_relu with a negative slope (the mask
        # then comes from z); saving a tensor that autograd already holds costs no memory.
        ctx.save_for_backward(x, weight, in_scale, in_shift, out_scale, out_shift, residual, out, z_sum, in_centre)
        ctx.spec = ConvSpec(*options)
        if not ctx.spec.stats:
            ctx.mark_non_differentiable(z_sum, z_m2)

    @staticmethod
    def backward(ctx, dout, dsum=None, dm2=None):
        x, weight, in_scale, in_shift, out_scale, out_shift, residual, out, z_sum, in_centre = ctx.saved_tensors
        spec, need = ctx.spec, ctx.needs_input_grad
        need_centre = in_centre is not None and need[7 + _SPEC_FIELDS]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            grads = recomputed_conv_grads(spec, (dout, dsum, dm2), (x, weight, in_scale, in_shift, out_scale,
                                                                       out_shift, residual, in_centre),
                                          tuple(need[:7]) + (need_centre,))
            return grads[:7] + (None,) * _SPEC_FIELDS + grads[7:]
        N, CO = out.shape[:2]
        prologue = (in_scale, in_shift, *spec.geometry(), *spec.prologue(), in_centre)
        acc = None
        if out_scale is not None and need[4]:
            # d out_scale = sum dz * acc: recompute the un-scaled conv rather than keep it alive.
            acc = torch.ops.recgen.fused_conv2d(x, weight, in_scale, in_shift, None, None, None, *spec.geometry(),
                                                *spec.prologue(), "none", 0.0, False, in_centre)[0]
        if spec.stats:
            # sum and M2 are of z = out (stats require out_act 'none'): one elementwise pass.
            # d M2 / d z = 2 (z - mean): deviations, not 2 z, which would cancel against dsum.
            # The three terms nearly cancel where the statistics' gradients are large (a norm's
            # scale invariance): summed in float64 and rounded once, as the statistics are
            # merged. (Costs float64 temporaries of the output's size in this pass; a fused
            # kernel for it is part of issue 19's open work.)
            dz = dout.to(torch.float64)
            if dsum is not None:
                dz = dz + dsum[:, :, None, None]
            if dm2 is not None:
                mean = (z_sum / (out.shape[2] * out.shape[3]))
                dz = dz + 2 * (out.to(torch.float64) - mean[:, :, None, None]) * dm2[:, :, None, None]
            dz = dz.to(torch.float32)
            d_out_shift = dz.sum(dim=(0, 2, 3)).to(out_shift.dtype) if need[5] else None
            d_out_scale = (dz * acc.to(torch.float32)).sum(dim=(0, 2, 3)).to(out_scale.dtype) if acc is not None else None
            d_residual = dz.to(residual.dtype) if need[6] else None
            dacc = dz if out_scale is None else dz * out_scale.to(torch.float32)[None, :, None, None]
            dacc = dacc.to(x.dtype)
        else:
            # The epilogue's activation/affine/residual backward is affine_act's backward kernel
            # with y = acc: dacc = act'(.) * dout * out_scale, d residual, and per-(n, co) sums.
            expand = (lambda v: None if v is None else v.expand(N, CO))
            grad_dtypes = (x.dtype, torch.float32 if acc is not None else None,
                           torch.float32 if out_shift is not None and need[5] else None,
                           residual.dtype if residual is not None and need[6] else None)
            dacc, d_scale_nc, d_shift_nc, d_residual = affine_act_grads(
                dout, out, acc, expand(out_scale), expand(out_shift), residual, spec.out_act,
                spec.out_slope, grad_dtypes)
            d_out_scale = None if d_scale_nc is None else d_scale_nc.sum(0).to(out_scale.dtype)
            d_out_shift = None if d_shift_nc is None else d_shift_nc.sum(0).to(out_shift.dtype)
        dacc = dacc.contiguous(memory_format=torch.channels_last)
        dx = d_in_scale = d_in_shift = d_in_centre = dw = None
        if need[0] or need[2] or need[3] or need_centre:
            dx, d_in_scale, d_in_shift, d_in_centre = torch.ops.recgen.conv2d_bwd_data(dacc, x, weight, *prologue)
            d_in_scale = d_in_scale.to(in_scale.dtype) if in_scale is not None and need[2] else None
            d_in_shift = d_in_shift.to(in_shift.dtype) if in_shift is not None and need[3] else None
            d_in_centre = d_in_centre.to(in_centre.dtype) if need_centre else None
        if need[1]:
            dw = torch.ops.recgen.conv2d_bwd_weight(dacc, x, weight.shape, *prologue).to(weight.dtype)
        return ((dx if need[0] else None, dw, d_in_scale, d_in_shift, d_out_scale, d_out_shift, d_residual)
                + (None,) * _SPEC_FIELDS + (d_in_centre,))


_SPEC_FIELDS = len(astuple(ConvSpec()))
register_function("fused_conv2d", FusedConv2dFunction)


def recomputed_conv_grads(spec: ConvSpec, grads: tuple, inputs: tuple, needs: tuple) -> tuple:
    """FusedConv2dFunction's backward when it runs with create_graph=True (double backward): the
    forward recomputed through the reference (recgen.reference.conv.fused_conv2d: torch's conv2d
    and elementwise ops) under autograd, in float32 (float64 stays), so the gradients returned
    are differentiable; the kernels stay the path without create_graph."""
    from recgen.reference.conv import fused_conv2d as reference_fused_conv2d

    # One view per argument: the same tensor passed twice (x as its own residual) gets each
    # argument's share of the gradient, as the engine sums them.
    inputs = tuple(None if t is None else t.view_as(t) for t in inputs)
    compute = torch.promote_types(inputs[0].dtype, torch.float32)
    up = [None if t is None else t.to(compute) for t in inputs]
    names = ("in_scale", "in_shift", "out_scale", "out_shift", "residual", "in_centre")
    outputs = reference_fused_conv2d(up[0], up[1], **dict(zip(names, up[2:])), stride=spec.stride,
                                     padding_mode=spec.padding_mode, upsample=spec.upsample, in_act=spec.in_act,
                                     in_slope=spec.in_slope, out_act=spec.out_act, out_slope=spec.out_slope,
                                     stats=spec.stats)
    outputs = outputs if spec.stats else (outputs,)
    pairs = [(o, g.to(o.dtype)) for o, g in zip(outputs, grads) if g is not None]
    wanted = [t for t, need in zip(inputs, needs) if need and t is not None]
    found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], create_graph=True,
                                     allow_unused=True) if pairs and wanted else ())
    return tuple(next(found, None) if need and t is not None else None for t, need in zip(inputs, needs))


def check_schema_arguments(*, stride, padding_mode, upsample, in_scale, in_shift, in_act, in_slope, out_scale,
                           out_shift, residual, out_act, out_slope, stats, in_centre=None) -> None:
    """What torch.ops.recgen.fused_conv2d's schema would coerce (stride=True to 1) or reject with
    its own words: checked first by recgen.functional.fused_conv2d, with conv2d_fwd's messages."""
    _check_stats(out_act, stats)
    check_options(stride, padding_mode, in_act, out_act)
    for name, t in (("in_centre", in_centre), ("in_scale", in_scale), ("in_shift", in_shift), ("out_scale", out_scale),
                    ("out_shift", out_shift), ("residual", residual)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"conv2d_fwd: {name} must be a tensor or None, got {type(t).__name__}")
