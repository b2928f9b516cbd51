"""The fused convolution of residual blocks as a torch.library op with autograd.

Name chain: _conv2d_fwd_kernel / _conv2d_bwd_data_kernel / _conv2d_bwd_weight_kernel
-> conv2d_fwd / conv2d_bwd_data / conv2d_bwd_weight -> torch.ops.recgen.fused_conv2d (autograd:
FusedConv2dFunction) / conv2d_bwd_data / conv2d_bwd_weight (recgen/ops/library.py)
-> fused_conv2d -> recgen.functional.fused_conv2d -> recgen.nn.ResidualBlock.

Forward semantics: recgen.reference.conv.fused_conv2d. ConvSpec, the non-tensor arguments, is
passed to the op as primitives; the op always returns (out, sum, sumsq), sum and sumsq empty
when stats=False. Backward passes over memory: the epilogue's backward (activation, scale,
shift, residual: affine_act's backward kernel, writing dacc and the per-channel sums; a torch
elementwise pass when the statistics' gradient enters), the data-gradient kernel (with the
prologue's backward fused in), the weight-gradient kernel, and, only when out_scale needs a
gradient, a recompute of the un-scaled conv (saves memory). Every launch of the backward goes
through a torch.ops.recgen op, so compiled graphs trace it.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from recgen.ops.affine import affine_act_grads
from recgen.ops.conv import check_conv2d_fwd, check_options, conv2d_fwd
from recgen.ops.conv_bwd import conv2d_bwd_data_op, conv2d_bwd_weight_op
from recgen.ops.library import absent_like, define, register_function


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
                       upsample, in_act, in_slope, out_act, out_slope, stats):
    _check_stats(out_act, stats)
    N, _, _, _, CO, _, OH, OW = check_conv2d_fwd(x, weight, stride, padding_mode, upsample, in_scale, in_shift,
                                                 in_act, out_scale, out_shift, residual, out_act)
    out = x.new_empty((N, OH, OW, CO)).permute(0, 3, 1, 2)  # channels_last, as conv2d_fwd's
    if not stats:
        return out, absent_like(x), absent_like(x)
    return out, x.new_empty((N, CO), dtype=torch.float32), x.new_empty((N, CO), dtype=torch.float32)


# stride is a SymInt: triton_op infers the schema from the annotations, where `int` means SymInt.
@define("fused_conv2d", "(Tensor x, Tensor weight, Tensor? in_scale, Tensor? in_shift, Tensor? out_scale, "
        "Tensor? out_shift, Tensor? residual, SymInt stride, str padding_mode, bool upsample, str in_act, "
        "float in_slope, str out_act, float out_slope, bool stats) -> (Tensor, Tensor, Tensor)",
        _fused_conv2d_fake)
def fused_conv2d_op(x: Tensor, weight: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
                    out_scale: Optional[Tensor], out_shift: Optional[Tensor], residual: Optional[Tensor], stride: int,
                    padding_mode: str, upsample: bool, in_act: str, in_slope: float, out_act: str, out_slope: float,
                    stats: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """torch.ops.recgen.fused_conv2d: conv2d_fwd returning (out, sum, sumsq) always, sum and
    sumsq empty when stats=False; differentiable in every tensor (FusedConv2dFunction)."""
    _check_stats(out_act, stats)
    result = conv2d_fwd(x, weight, stride=stride, padding_mode=padding_mode, upsample=upsample,
                        in_scale=in_scale, in_shift=in_shift, in_act=in_act, in_slope=in_slope,
                        out_scale=out_scale, out_shift=out_shift, residual=residual, out_act=out_act,
                        out_slope=out_slope, stats=stats)
    return result if stats else (result, absent_like(x), absent_like(x))


class FusedConv2dFunction(torch.autograd.Function):
    """out, sum, sumsq = fused_conv2d(x, weight, ...); see recgen.reference.conv.fused_conv2d.
    The autograd of torch.ops.recgen.fused_conv2d (registered below); inputs as the op's:
    x, weight, in_scale, in_shift, out_scale, out_shift, residual, then ConvSpec's fields."""

    @staticmethod
    def forward(x, weight, in_scale, in_shift, out_scale, out_shift, residual, *options):
        return torch.ops.recgen.fused_conv2d(x, weight, in_scale, in_shift, out_scale, out_shift, residual,
                                             *options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, in_scale, in_shift, out_scale, out_shift, residual, *options = inputs
        out, z_sum, z_sumsq = output
        # residual is saved only for its dtype and for leaky_relu with a negative slope (the mask
        # then comes from z); saving a tensor that autograd already holds costs no memory.
        ctx.save_for_backward(x, weight, in_scale, in_shift, out_scale, out_shift, residual, out)
        ctx.spec = ConvSpec(*options)
        if not ctx.spec.stats:
            ctx.mark_non_differentiable(z_sum, z_sumsq)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dsum=None, dsumsq=None):
        x, weight, in_scale, in_shift, out_scale, out_shift, residual, out = ctx.saved_tensors
        spec, need = ctx.spec, ctx.needs_input_grad
        N, CO = out.shape[:2]
        prologue = (in_scale, in_shift, *spec.geometry(), *spec.prologue())
        acc = None
        if out_scale is not None and need[4]:
            # d out_scale = sum dz * acc: recompute the un-scaled conv rather than keep it alive.
            acc = torch.ops.recgen.fused_conv2d(x, weight, in_scale, in_shift, None, None, None, *spec.geometry(),
                                                *spec.prologue(), "none", 0.0, False)[0]
        if spec.stats:
            # sum/sumsq are of z = out (stats require out_act 'none'): one elementwise pass.
            dz = dout.to(torch.float32)
            if dsum is not None:
                dz = dz + dsum[:, :, None, None]
            if dsumsq is not None:
                dz = dz + 2 * out.to(torch.float32) * dsumsq[:, :, None, None]
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
        dx = d_in_scale = d_in_shift = dw = None
        if need[0] or need[2] or need[3]:
            # conv2d_bwd_*_op are the registered ops: calling one dispatches torch.ops.recgen.<name>.
            dx, d_in_scale, d_in_shift = conv2d_bwd_data_op(dacc, x, weight, *prologue)
            d_in_scale = d_in_scale.to(in_scale.dtype) if in_scale is not None and need[2] else None
            d_in_shift = d_in_shift.to(in_shift.dtype) if in_shift is not None and need[3] else None
        if need[1]:
            dw = conv2d_bwd_weight_op(dacc, x, weight.shape, *prologue).to(weight.dtype)
        return (dx if need[0] else None, dw, d_in_scale, d_in_shift, d_out_scale, d_out_shift,
                d_residual) + (None,) * len(astuple(spec))


register_function("fused_conv2d", FusedConv2dFunction)


def fused_conv2d(x, weight, *, stride=1, padding_mode="zeros", upsample=False, in_scale=None,
                 in_shift=None, in_act="none", in_slope=0.01, out_scale=None, out_shift=None,
                 residual=None, out_act="none", out_slope=0.01, stats=False):
    """Triton path of recgen.reference.conv.fused_conv2d, differentiable in every tensor:
    torch.ops.recgen.fused_conv2d. Returns out, or (out, sum, sumsq) with stats=True."""
    _check_stats(out_act, stats)
    # What the op's schema would coerce (stride=True) or reject with its own message.
    check_options(stride, padding_mode, in_act, out_act)
    for name, t in (("in_scale", in_scale), ("in_shift", in_shift), ("out_scale", out_scale),
                    ("out_shift", out_shift), ("residual", residual)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"conv2d_fwd: {name} must be a tensor or None, got {type(t).__name__}")
    spec = ConvSpec(stride, padding_mode, bool(upsample), in_act, float(in_slope), out_act, float(out_slope),
                    bool(stats))
    out, z_sum, z_sumsq = torch.ops.recgen.fused_conv2d(x, weight, in_scale, in_shift, out_scale, out_shift,
                                                        residual, *astuple(spec))
    return (out, z_sum, z_sumsq) if stats else out
