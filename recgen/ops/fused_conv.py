"""The fused convolution of residual blocks as an autograd Function.

Name chain: _conv2d_fwd_kernel / _conv2d_bwd_data_kernel / _conv2d_bwd_weight_kernel
-> conv2d_fwd / conv2d_bwd_data / conv2d_bwd_weight -> FusedConv2dFunction
-> recgen.functional.fused_conv2d -> recgen.nn.ResidualBlock.

Forward semantics: recgen.reference.conv.fused_conv2d. Backward passes over memory: the
epilogue's backward (activation, scale, shift, residual: affine_act's backward kernel, writing
dacc and the per-channel sums; a torch elementwise pass when the statistics' gradient enters),
the data-gradient kernel (with the prologue's backward fused in), the weight-gradient kernel,
and, only when out_scale needs a gradient, a recompute of the un-scaled conv (saves memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recgen.ops.affine import affine_act_bwd
from recgen.ops.conv import conv2d_fwd
from recgen.ops.conv_bwd import conv2d_bwd_data, conv2d_bwd_weight


@dataclass(frozen=True)
class ConvSpec:
    """The non-tensor arguments of fused_conv2d."""
    stride: int = 1
    padding_mode: str = "zeros"
    upsample: bool = False
    in_act: str = "none"
    in_slope: float = 0.01
    out_act: str = "none"
    out_slope: float = 0.01
    stats: bool = False

    def geometry(self) -> dict:
        return dict(stride=self.stride, padding_mode=self.padding_mode, upsample=self.upsample)

    def prologue(self) -> dict:
        return dict(in_act=self.in_act, in_slope=self.in_slope)


class FusedConv2dFunction(torch.autograd.Function):
    """out[, sum, sumsq] = fused_conv2d(x, weight, ...); see recgen.reference.conv.fused_conv2d."""

    @staticmethod
    def forward(ctx, x, weight, in_scale, in_shift, out_scale, out_shift, residual, spec: ConvSpec):
        result = conv2d_fwd(x, weight, **spec.geometry(), in_scale=in_scale, in_shift=in_shift,
                            **spec.prologue(), out_scale=out_scale, out_shift=out_shift,
                            residual=residual, out_act=spec.out_act, out_slope=spec.out_slope,
                            stats=spec.stats)
        out, z_sum, z_sumsq = result if spec.stats else (result, None, None)
        # residual is saved only for its dtype and for leaky_relu with a negative slope (the mask
        # then comes from z); saving a tensor that autograd already holds costs no memory.
        ctx.save_for_backward(x, weight, in_scale, in_shift, out_scale, out_shift, residual, out)
        ctx.spec = spec
        if spec.stats:
            return out, z_sum, z_sumsq
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dsum=None, dsumsq=None):
        x, weight, in_scale, in_shift, out_scale, out_shift, residual, out = ctx.saved_tensors
        spec, need = ctx.spec, ctx.needs_input_grad
        N, CO = out.shape[:2]
        acc = None
        if out_scale is not None and need[4]:
            # d out_scale = sum dz * acc: recompute the un-scaled conv rather than keep it alive.
            acc = conv2d_fwd(x, weight, **spec.geometry(), in_scale=in_scale, in_shift=in_shift,
                             **spec.prologue())
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
            dacc, d_scale_nc, d_shift_nc, d_residual = affine_act_bwd(
                dout, out, acc, expand(out_scale), expand(out_shift), residual, spec.out_act,
                spec.out_slope, grad_dtypes)
            d_out_scale = None if d_scale_nc is None else d_scale_nc.sum(0).to(out_scale.dtype)
            d_out_shift = None if d_shift_nc is None else d_shift_nc.sum(0).to(out_shift.dtype)
        dacc = dacc.contiguous(memory_format=torch.channels_last)
        dx = d_in_scale = d_in_shift = dw = None
        if need[0] or need[2] or need[3]:
            dx, d_in_scale, d_in_shift = conv2d_bwd_data(
                dacc, x, weight, **spec.geometry(), in_scale=in_scale, in_shift=in_shift, **spec.prologue())
            d_in_scale = d_in_scale.to(in_scale.dtype) if d_in_scale is not None and need[2] else None
            d_in_shift = d_in_shift.to(in_shift.dtype) if d_in_shift is not None and need[3] else None
        if need[1]:
            dw = conv2d_bwd_weight(dacc, x, weight.shape, **spec.geometry(), in_scale=in_scale,
                                   in_shift=in_shift, **spec.prologue()).to(weight.dtype)
        return (dx if need[0] else None, dw, d_in_scale, d_in_shift, d_out_scale, d_out_shift,
                d_residual, None)


def fused_conv2d(x, weight, *, stride=1, padding_mode="zeros", upsample=False, in_scale=None,
                 in_shift=None, in_act="none", in_slope=0.01, out_scale=None, out_shift=None,
                 residual=None, out_act="none", out_slope=0.01, stats=False):
    """Triton path of recgen.reference.conv.fused_conv2d, differentiable in every tensor."""
    if stats and (out_act != "none"):
        raise ValueError("fused_conv2d: stats are of the pre-activation; use out_act='none' with stats=True")
    spec = ConvSpec(stride, padding_mode, upsample, in_act, in_slope, out_act, out_slope, stats)
    return FusedConv2dFunction.apply(x, weight, in_scale, in_shift, out_scale, out_shift, residual, spec)
