"""The fused pipeline of a residual block: convolutions with fused prologue/epilogue, batch or
instance statistics taken in the conv epilogue, and at most one elementwise pass.

    out = act_out(skip(x) + residual_scale * norm2(conv2(drop(act(norm1(conv1(x)))))))

Passes over activation memory, forward (identity skip):
- eval, BatchNorm or no norm: 2 conv kernels and nothing else (BN folded into the epilogues;
  the residual add and final activation in conv2's epilogue);
- training BatchNorm, or InstanceNorm: 2 conv kernels (each also writing per-(image, channel)
  sums) and 1 elementwise pass (norm2 + residual + activation). norm1 + activation is applied
  by conv2's prologue while it loads its input, so the normalised intermediate is never written.
A 1x1 projection skip adds its own conv (its norm folded in eval; one more elementwise pass in
training); dropout > 0 in training materialises the dropped activation (one more pass), in the
memory format torch's own block would hold it (the caller's input's, `dropout_format`), so that
the mask is drawn over the same element order and a seeded run drops what torch drops.
Per-channel statistics math (tiny (N, C) tensors) runs in torch, so autograd differentiates
through it; the kernels' backward receives the statistics' gradients.

Mixed precision (compute_dtype, what recgen.nn's blocks pass under torch.autocast) follows what
torch's modules do under autocast, measured on torch 2.13 (CPU, bf16 and fp16, forward hooks):
- conv2d is on autocast's lower-precision list (CPU and CUDA): input, weight and bias are cast
  to the autocast dtype and the output is in it;
- batch_norm / instance_norm are on no list: they take the low-precision conv output with the
  float32 affine parameters and running statistics, compute the statistics in float32, update
  the running statistics in float32, and return the low-precision dtype;
- ReLU and dropout keep their input's dtype (CPU autocast's reflection_pad2d returns float32,
  an exact widening that the next conv casts back: no effect on values);
- the residual add promotes: a low-precision norm2 output + a float32 identity skip is float32
  (and so is the final activation); with a projection skip both are low precision.
Gradients reach the float32 parameters in float32 through the casts. Here: x, the conv weights
and biases are cast to compute_dtype; the kernels run in it and the norm scale/shift stay
float32 statistics; an identity skip keeps x's dtype, and when that is wider the block ends
with norm2's output rounded to compute_dtype (as torch's is) added to the skip in the wider dtype:
one more elementwise pass than above (the residual add can no longer share conv2's epilogue or
norm2's pass, whose outputs are in compute_dtype), plus the cast of x.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recgen.backend import implementation, record
from recgen.reference import conv as reference_conv



def fused_conv2d(x, weight, *, stride=1, padding_mode="zeros", upsample=False, in_scale=None,
                 in_shift=None, in_act="none", in_slope=0.01, out_scale=None, out_shift=None,
                 residual=None, out_act="none", out_slope=0.01, stats=False, in_centre=None):
    """Convolution with fused prologue/epilogue (semantics: recgen.reference.conv.fused_conv2d),
    on the Triton path (torch.ops.recgen.fused_conv2d, differentiable in every tensor) or the
    reference as the backend decides (the reference is made of torch's own conv2d and
    elementwise ops, so it is also the `torch` backend's). Zero-size images or channels take the
    reference, so the result or error is exactly torch's. Returns out, or (out, sum, m2) with
    stats=True."""
    kwargs = dict(stride=stride, padding_mode=padding_mode, upsample=upsample, in_scale=in_scale,
                  in_shift=in_shift, in_act=in_act, in_slope=in_slope, out_scale=out_scale, out_shift=out_shift,
                  residual=residual, out_act=out_act, out_slope=out_slope, stats=stats, in_centre=in_centre)
    degenerate = (isinstance(x, torch.Tensor) and x.dim() == 4 and isinstance(weight, torch.Tensor)
                  and weight.dim() == 4 and 0 in (x.shape[2], x.shape[3], weight.shape[0], weight.shape[1]))
    impl = implementation(x)
    if impl not in ("kernels", "interpreter") or degenerate:
        record("reference" if impl == "reference" else "torch")
        return reference_conv.fused_conv2d(x, weight, **kwargs)
    record(impl)
    return _kernel_fused_conv2d(x, weight, **kwargs)


def _kernel_fused_conv2d(x, weight, *, stride=1, padding_mode="zeros", upsample=False, in_scale=None,
                         in_shift=None, in_act="none", in_slope=0.01, out_scale=None, out_shift=None,
                         residual=None, out_act="none", out_slope=0.01, stats=False, in_centre=None):
    """fused_conv2d on the Triton path, the implementation already chosen (residual_block's
    convolutions: the module chose it once for the whole block)."""
    from recgen.ops.conv.conv2d import check_schema_arguments  # registers torch.ops.recgen.fused_conv2d

    check_schema_arguments(stride=stride, padding_mode=padding_mode, upsample=upsample, in_scale=in_scale,
                           in_shift=in_shift, in_act=in_act, in_slope=in_slope, out_scale=out_scale,
                           out_shift=out_shift, residual=residual, out_act=out_act, out_slope=out_slope,
                           stats=stats, in_centre=in_centre)
    out, z_sum, z_m2 = torch.ops.recgen.fused_conv2d(
        x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride, padding_mode, bool(upsample),
        in_act, float(in_slope), out_act, float(out_slope), bool(stats), in_centre)
    return (out, z_sum, z_m2) if stats else out


def affine_act(y, scale=None, shift=None, residual=None, act="none", slope=0.01, centre=None):
    """out = act((y - centre[n, c]) * scale[n, c] + shift[n, c] + residual)
    (recgen.reference.conv.affine_act), on the Triton path (recgen.ops.conv.affine.checked_affine_act,
    then torch.ops.recgen.affine_act) or the reference as the backend decides. Pass the mean as
    `centre` rather than folding it into `shift` (beta - mean * scale): centred, nothing cancels
    where |mean| >> std."""
    impl = implementation(y)
    if impl in ("kernels", "interpreter"):
        record(impl)
        return _kernel_affine_act(y, scale, shift, residual, act, slope, centre)
    record("reference" if impl == "reference" else "torch")
    return reference_conv.affine_act(y, scale, shift, residual, act, slope, centre=centre)


def _kernel_affine_act(y, scale=None, shift=None, residual=None, act="none", slope=0.01, centre=None):
    """affine_act on the Triton path, the implementation already chosen."""
    from recgen.ops.conv.affine import checked_affine_act

    return checked_affine_act(y, scale, shift, residual, act, slope, centre)


@dataclass(frozen=True)
class BlockOps:
    """The convolution and the elementwise pass a block's pipeline runs on."""
    conv: object
    affine: object


@dataclass
class ConvParams:
    weight: torch.Tensor
    bias: torch.Tensor | None = None


def _bn_update_running(norm: torch.nn.modules.batchnorm._BatchNorm, mean, var_unbiased):
    """torch's running-statistics update for BatchNorm in training mode."""
    if not norm.track_running_stats:
        return
    with torch.no_grad():
        norm.num_batches_tracked.add_(1)
        factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
        norm.running_mean.mul_(1 - factor).add_(mean.detach().to(norm.running_mean.dtype), alpha=factor)
        norm.running_var.mul_(1 - factor).add_(var_unbiased.detach().to(norm.running_var.dtype), alpha=factor)


def uses_batch_statistics(norm) -> bool:
    """Whether `norm` normalises with statistics of the current batch: torch's rule, on the norm
    module's own training flag (a frozen BatchNorm in an otherwise training model stays eval)."""
    if norm is None:
        return False
    if isinstance(norm, torch.nn.InstanceNorm2d):
        return norm.training or not norm.track_running_stats
    return norm.training or norm.running_mean is None


def folded_affine(norm, bias):
    """(scale, shift) per channel of `norm` in eval mode with running statistics, applied after
    a conv with `bias`: norm(conv + bias) = conv * scale + shift."""
    if norm is None:
        return None, bias
    inv = torch.rsqrt(norm.running_var + norm.eps)
    scale = inv if norm.weight is None else norm.weight * inv
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    if bias is not None:
        shift = shift + bias * scale
    return scale, shift


def affine_from_stats(norm, z_sum, z_m2, pixels: int, dtype=torch.float32):
    """(centre, scale, shift) of shape (N, C) that normalise a conv output z whose
    per-(image, channel) sum and M2 (sum of squared deviations from the image's mean) over
    `pixels` pixels per image are z_sum, z_m2: norm(z) = (z - centre) * scale + shift, with the
    mean as the centre and beta as the shift, torch's own form. The folded z * scale +
    (beta - mean * scale) would cancel two terms |mean| / std times larger than the result, and
    its backward's d scale = sum dz * z would cancel against mean * sum dz. Updates BatchNorm
    running stats. The batch's M2 merges the images' with Chan's formula (every term
    non-negative): no E[z^2] - E[z]^2 cancellation either. Computed in float64 (the statistics
    are), returned in `dtype`, float32 for every kernel dtype."""
    N = z_sum.shape[0]
    if isinstance(norm, torch.nn.InstanceNorm2d):
        mean = z_sum / pixels
        var = z_m2 / pixels
    else:
        count = N * pixels
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input with "
                             f"{N} image(s) of {pixels} pixel(s)")
        mean = z_sum.sum(0) / count
        var = (z_m2.sum(0) + pixels * (z_sum / pixels - mean).square().sum(0)) / count
        if norm.training:
            _bn_update_running(norm, mean, var * (count / (count - 1)))
        mean, var = mean.expand(N, -1), var.expand(N, -1)
    scale = torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.to(scale.dtype)
    shift = None if norm.bias is None else norm.bias.to(dtype).expand(N, -1)
    return mean.to(dtype), scale.to(dtype), shift


def _norm_conv(ops, x, conv: ConvParams, norm, *, stride=1, padding_mode="zeros",
               upsample=False, prologue=None, act="none", slope=0.01, out_scale_mul=1.0,
               residual=None):
    """conv followed by `norm`: returns (y, pending) where pending is None when the norm, the
    residual and the activation were all fused into the epilogue, else the
    dict(centre=, scale=, shift=) per (image, channel) still to apply to y (batch or instance
    statistics), the keyword arguments of the elementwise pass (ops.affine)."""
    pro = prologue or {}
    if uses_batch_statistics(norm):
        y, z_sum, z_m2 = ops.conv(
            x, conv.weight, stride=stride, padding_mode=padding_mode, upsample=upsample, **pro,
            out_shift=conv.bias, stats=True)
        centre, scale, shift = affine_from_stats(norm, z_sum, z_m2, y.shape[2] * y.shape[3],
                                                 torch.promote_types(y.dtype, torch.float32))
        if out_scale_mul != 1.0:
            scale = scale * out_scale_mul
            shift = None if shift is None else shift * out_scale_mul
        return y, dict(centre=centre, scale=scale, shift=shift)
    scale, shift = folded_affine(norm, conv.bias)
    if out_scale_mul != 1.0:
        scale = torch.full_like(shift if shift is not None else conv.weight[:, 0, 0, 0], out_scale_mul) \
            if scale is None else scale * out_scale_mul
        shift = None if shift is None else shift * out_scale_mul
    y = ops.conv(
        x, conv.weight, stride=stride, padding_mode=padding_mode, upsample=upsample, **pro,
        out_scale=scale, out_shift=shift, residual=residual, out_act=act, out_slope=slope)
    return y, None


def _dropout_as_torch(t, p: float, memory_format):
    """F.dropout of `t` laid out in `memory_format`: torch draws the mask over the elements in
    memory order (bernoulli_ on an empty_like of its input), so the same layout as torch's block
    gives the same mask for the same seed. The next conv takes any layout."""
    return F.dropout(t.contiguous(memory_format=memory_format), p, True)


def torch_memory_format(x: torch.Tensor, norm1):
    """The layout torch's block holds conv1's normalised activation in, for input `x`: conv2d's
    output follows its input (channels_last when x is laid out so and not also plainly
    contiguous, torch's suggest_memory_format), BatchNorm and ReLU keep it, and InstanceNorm
    returns a contiguous tensor (torch's instance_norm runs on input.contiguous())."""
    if isinstance(norm1, torch.nn.InstanceNorm2d):
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _cast_conv(conv, dtype):
    """The conv's weight and bias in `dtype` (autograd casts the gradients back)."""
    if conv is None:
        return None
    return ConvParams(conv.weight.to(dtype), None if conv.bias is None else conv.bias.to(dtype))


def residual_block(x, conv1: ConvParams, norm1, conv2: ConvParams, norm2, skip_conv, skip_norm,
                   *, training: bool, stride=1, padding_mode="zeros", upsample=False,
                   activation="relu", negative_slope=0.01, out_activation=True,
                   residual_scale=1.0, dropout=0.0, compute_dtype=None,
                   dropout_format=torch.contiguous_format):
    """Run a residual block's fused pipeline, on the kernels' ops (every conv and elementwise pass
    goes straight to its torch.ops.recgen op) or, with the reference backend, on the reference
    ops they stand for: chosen once per block. x: (N, CI, H, W), best channels_last.
    conv*: ConvParams (or modules with .weight/.bias); norm*: BatchNorm2d / InstanceNorm2d
    modules or None (each follows its own training flag); `training` drives the dropout;
    skip_conv None means an identity skip. compute_dtype (autocast's): the convolutions run in
    it (x, weights and biases cast) while an identity skip keeps x's dtype, and the output has
    their promoted dtype, as torch's modules under autocast (see the module docstring); run it
    with autocast disabled. Returns (N, CO, OH, OW)."""
    # The implementation is chosen once for the whole block: the kernels' ops, or (the reference
    # backend) the reference ops they stand for.
    if implementation(x) in ("kernels", "interpreter"):
        ops = BlockOps(_kernel_fused_conv2d, _kernel_affine_act)
    else:
        ops = BlockOps(reference_conv.fused_conv2d, reference_conv.affine_act)
    act_kw = dict(act=activation, slope=negative_slope)
    out_act = activation if out_activation else "none"
    identity = x
    if compute_dtype is not None:
        x = x.to(compute_dtype, memory_format=torch.channels_last)
        conv1, conv2, skip_conv = (_cast_conv(c, compute_dtype) for c in (conv1, conv2, skip_conv))
    # Skip path first: in eval its norm folds into a 1x1 conv epilogue.
    if skip_conv is None:
        skip = identity
    else:
        skip, pending = _norm_conv(ops, x, skip_conv, skip_norm, stride=stride, upsample=upsample)
        if pending is not None:
            skip = ops.affine(skip, **pending)
    y1, pending1 = _norm_conv(ops, x, conv1, norm1, stride=stride, padding_mode=padding_mode,
                              upsample=upsample, **({} if uses_batch_statistics(norm1) else act_kw))
    prologue = None
    if pending1 is not None:
        if dropout > 0 and training:
            y1 = _dropout_as_torch(ops.affine(y1, **pending1, **act_kw), dropout, dropout_format)
        else:
            prologue = dict(in_centre=pending1["centre"], in_scale=pending1["scale"], in_shift=pending1["shift"],
                            in_act=activation, in_slope=negative_slope)
    elif dropout > 0 and training:
        y1 = _dropout_as_torch(y1, dropout, dropout_format)
    out_dtype = torch.promote_types(x.dtype, skip.dtype)
    if out_dtype != x.dtype:
        # A wider skip (autocast): norm2's output rounded to x's dtype as torch's is, then one
        # pass adds it to the skip and applies the activation in the wider dtype.
        y2, pending2 = _norm_conv(ops, y1, conv2, norm2, padding_mode=padding_mode, prologue=prologue,
                                  out_scale_mul=residual_scale)
        if pending2 is not None:
            y2 = ops.affine(y2, **pending2)
        return ops.affine(skip.to(out_dtype), residual=y2, act=out_act, slope=negative_slope)
    y2, pending2 = _norm_conv(ops, y1, conv2, norm2, padding_mode=padding_mode,
                              prologue=prologue, act=out_act, slope=negative_slope,
                              out_scale_mul=residual_scale, residual=skip)
    if pending2 is None:
        return y2
    return ops.affine(y2, **pending2, residual=skip, act=out_act, slope=negative_slope)
