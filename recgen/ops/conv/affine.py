"""Affine + activation, out = act((y - centre[n, c]) * scale[n, c] + shift[n, c] + residual):
launchers and the autograd Function of the elementwise pass that applies a batch/instance
normalisation once its statistics are known (typically the tail of a residual block).

The optional centre (usually the mean) is subtracted in float32 before the scale: a norm applied
as y * scale + (beta - mean * scale) cancels two terms ~|mean| / std times larger than the result,
in the output and in the backward's dscale = sum(dz * y) - mean * sum(dz). Centred, dscale is
sum(dz * (y - centre)) and nothing cancels; dcentre = -sum(dz * scale) per (n, c).

Name chain, as called: _affine_act_fwd_kernel (kernels/conv/affine.py) -> affine_act_fwd ->
torch.ops.recgen.affine_act (affine_act_op; its autograd: AffineActFunction) -> checked_affine_act
(the argument checks) -> recgen.functional.affine_act -> recgen.functional.residual_block ->
recgen.nn.ResidualBlock. Backward: AffineActFunction.backward -> affine_act_grads ->
torch.ops.recgen.affine_act_bwd -> affine_act_bwd -> _affine_act_bwd_kernel.

Layout: any strides are accepted (channels-last memory is the fast case). The output is
allocated like y and the gradients of y and residual like the incoming gradient
(`torch.empty_like`), so channels-last stays channels-last. Math is float32; the output keeps y's
dtype (scale/shift are statistics, often float32, and must not promote a bf16 activation), as
recgen.reference.conv.affine_act does. Backward: one launch writes dy / dresidual and
per-tile partial sums for dscale / dshift / dcentre, reduced with torch (deterministic, no atomics).

Schemas (the centre's arguments are appended, with defaults, so every older call keeps working):
    recgen::affine_act(Tensor y, Tensor? scale, Tensor? shift, Tensor? residual, str act,
                       float slope, Tensor? centre=None) -> Tensor
    recgen::affine_act_bwd(Tensor dout, Tensor? out, Tensor? y, Tensor? scale, Tensor? shift,
                           Tensor? residual, str act, float slope, ScalarType? dy_dtype,
                           ScalarType? dscale_dtype, ScalarType? dshift_dtype, ScalarType? dres_dtype,
                           Tensor? centre=None, ScalarType? dcentre_dtype=None)
                           -> (Tensor, Tensor, Tensor, Tensor, Tensor)
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
from torch import Tensor

from recgen.backend import KERNEL_DTYPES, kernels_runnable
from recgen.ops.common.launch import ACT_CODES, poisoned
from recgen.ops.common.library import missing_output, register_op, register_function
from recgen.ops.common.tiling import affine_blocks, affine_tiles, launch_chosen
from recgen.reference.conv import ACTIVATIONS

DTYPES = KERNEL_DTYPES


def _new_like(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An output laid out like `t` (NaN-poisoned in tests)."""
    return poisoned(torch.empty_like(t, dtype=dtype))


def _strides(t, prefix, dims):
    """{stride_<prefix><dim>: stride} of a tensor with dimensions `dims`; zeros for None."""
    strides = (0,) * len(dims) if t is None else t.stride()
    return {f"stride_{prefix}{d}": s for d, s in zip(dims, strides)}


def _strides4(t, prefix):
    return _strides(t, prefix, "nchw")


def _strides2(t, prefix):
    return _strides(t, prefix, "nc")


def _mask_from_z(act: str, slope: float) -> bool:
    """torch's leaky_relu backward tests the sign of its input; the output has the same sign
    unless slope < 0, and then the backward recomputes z instead of reading out."""
    return act == "leaky_relu" and slope < 0


def affine_act_fwd(y, scale, shift, residual, act, slope, centre=None):
    """out = act((y - centre[n, c]) * scale[n, c] + shift[n, c] + residual) in one launch.

    y: (N, C, H, W); centre, scale, shift: (N, C) or None; residual: (N, C, H, W) or None; any
    strides. act: 'none' | 'relu' | 'leaky_relu'. Returns out laid out like y, in y's dtype.
    Inputs are assumed validated (see checked_affine_act).
    """
    from recgen.kernels.conv.affine import _affine_act_fwd_kernel

    N, C, H, W = y.shape
    out = _new_like(y, y.dtype)
    block_p, block_c = affine_blocks(C, H * W)
    tiles = triton.cdiv(H * W, block_p)
    optional = dict(centre_ptr=centre, scale_ptr=scale, shift_ptr=shift, res_ptr=residual)
    launch_chosen(
        "affine_act_fwd", _affine_act_fwd_kernel, affine_tiles(C, H * W),
        (N * tiles, triton.cdiv(C, block_c)),
        y_ptr=y, **{k: y if v is None else v for k, v in optional.items()},  # y: unread stand-in
        out_ptr=out, slope=float(slope), C=C, W=W, HW=H * W, TILES=tiles,
        **_strides4(y, "y"), **_strides2(centre, "m"), **_strides2(scale, "s"), **_strides2(shift, "t"),
        **_strides4(residual, "r"), **_strides4(out, "o"),
        HAS_CENTRE=centre is not None, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        HAS_RESIDUAL=residual is not None, ACT=ACT_CODES[act],
    )
    return out


def affine_act_bwd(dout, out, y, scale, shift, residual, act, slope, grad_dtypes, centre=None):
    """Gradients of affine_act: one launch, then a torch sum of the per-tile partial sums.

    dout: (N, C, H, W) gradient of out, any strides. The other tensors are passed only where
    the kernel reads them, None otherwise: out (the forward output) for the relu / leaky_relu
    mask when slope >= 0; y and centre for dscale and for the z mask (leaky_relu with slope < 0);
    scale for dy, dcentre and the z mask; shift and residual for the z mask only.
    grad_dtypes: dtypes of (dy, dscale, dshift, dresidual) or of (dy, dscale, dshift, dresidual,
    dcentre), None for a gradient not wanted.
    Returns one gradient per entry of grad_dtypes, None where not wanted: dy and dresidual laid
    out like dout, dscale, dshift and dcentre (N, C).
    """
    from recgen.kernels.conv.affine import _affine_act_bwd_kernel

    if len(grad_dtypes) not in (4, 5):
        raise ValueError(f"affine_act_bwd: grad_dtypes must have 4 or 5 entries, got {len(grad_dtypes)}")
    dy_dtype, dscale_dtype, dshift_dtype, dres_dtype, dcentre_dtype = (*grad_dtypes, None)[:5]
    N, C, H, W = dout.shape
    block_p, block_c = affine_blocks(C, H * W)
    tiles = triton.cdiv(H * W, block_p)
    dy = _new_like(dout, dy_dtype) if dy_dtype is not None else None
    dres = _new_like(dout, dres_dtype) if dres_dtype is not None else None
    part = dict(size=(N, tiles, C), dtype=torch.float32, device=dout.device)
    dscale_part, dshift_part, dcentre_part = (poisoned(torch.empty(**part)) if dt is not None else None
                                              for dt in (dscale_dtype, dshift_dtype, dcentre_dtype))
    ptrs = dict(out_ptr=out, y_ptr=y, centre_ptr=centre, scale_ptr=scale, shift_ptr=shift, res_ptr=residual,
                dy_ptr=dy, dres_ptr=dres, dscale_part_ptr=dscale_part, dshift_part_ptr=dshift_part,
                dcentre_part_ptr=dcentre_part)
    launch_chosen(
        "affine_act_bwd", _affine_act_bwd_kernel, affine_tiles(C, H * W),
        (N * tiles, triton.cdiv(C, block_c)),
        dout_ptr=dout, **{k: dout if v is None else v for k, v in ptrs.items()},  # dout: unused stand-in
        slope=float(slope), C=C, W=W, HW=H * W, TILES=tiles,
        **_strides4(dout, "g"), **_strides4(out, "o"), **_strides4(dy if dy is not None else dres, "d"),
        **_strides4(y, "y"), **_strides2(centre, "m"), **_strides2(scale, "s"), **_strides2(shift, "t"),
        **_strides4(residual, "r"),
        HAS_CENTRE=centre is not None, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        HAS_RESIDUAL=residual is not None, HAS_DY=dy is not None, HAS_DRES=dres is not None,
        HAS_DSCALE=dscale_part is not None, HAS_DSHIFT=dshift_part is not None,
        HAS_DCENTRE=dcentre_part is not None, ACT=ACT_CODES[act], MASK_FROM_Z=_mask_from_z(act, slope),
    )
    # Deterministic reduction over the pixel tiles (zero tiles, an empty image, gives zeros).
    # (in float64: a norm's backward subtracts these sums from per-pixel terms of their size)
    tile_sum = (lambda part, dtype: None if part is None else part.sum(dim=1, dtype=torch.float64).to(dtype))
    dscale = tile_sum(dscale_part, dscale_dtype)
    dshift = tile_sum(dshift_part, dshift_dtype)
    dcentre = None if dcentre_part is None else tile_sum(dcentre_part, dcentre_dtype).neg()
    return (dy, dscale, dshift, dres, dcentre)[:len(grad_dtypes)]


def _affine_act_fake(y, scale, shift, residual, act, slope, centre=None):
    return torch.empty_like(y)


@register_op("affine_act", "(Tensor y, Tensor? scale, Tensor? shift, Tensor? residual, str act, float slope, "
             "Tensor? centre=None) -> Tensor", _affine_act_fake)
def affine_act_op(y: Tensor, scale: Optional[Tensor], shift: Optional[Tensor], residual: Optional[Tensor], act: str,
                  slope: float, centre: Optional[Tensor] = None) -> Tensor:
    """torch.ops.recgen.affine_act: affine_act_fwd (arguments validated by checked_affine_act);
    differentiable in y, scale, shift, residual, centre (AffineActFunction)."""
    return affine_act_fwd(y, scale, shift, residual, act, slope, centre)


# grad_dtypes, a tuple of optional dtypes, is passed as `ScalarType?` arguments: the first four
# (dy, dscale, dshift, dresidual) in place, dcentre's after the centre, appended with a default.
_BWD_SCHEMA = ("(Tensor dout, Tensor? out, Tensor? y, Tensor? scale, Tensor? shift, Tensor? residual, str act, "
               "float slope, ScalarType? dy_dtype, ScalarType? dscale_dtype, ScalarType? dshift_dtype, "
               "ScalarType? dres_dtype, Tensor? centre=None, ScalarType? dcentre_dtype=None) "
               "-> (Tensor, Tensor, Tensor, Tensor, Tensor)")


def _affine_act_bwd_fake(dout, out, y, scale, shift, residual, act, slope, dy_dtype, dscale_dtype, dshift_dtype,
                         dres_dtype, centre=None, dcentre_dtype=None):
    like = (lambda dt: missing_output(dout) if dt is None else torch.empty_like(dout, dtype=dt))
    vector = (lambda dt: missing_output(dout) if dt is None else dout.new_empty(dout.shape[:2], dtype=dt))
    return like(dy_dtype), vector(dscale_dtype), vector(dshift_dtype), like(dres_dtype), vector(dcentre_dtype)


@register_op("affine_act_bwd", _BWD_SCHEMA, _affine_act_bwd_fake)
def affine_act_bwd_op(dout: Tensor, out: Optional[Tensor], y: Optional[Tensor], scale: Optional[Tensor],
                      shift: Optional[Tensor], residual: Optional[Tensor], act: str, slope: float,
                      dy_dtype: Optional[torch.dtype], dscale_dtype: Optional[torch.dtype],
                      dshift_dtype: Optional[torch.dtype], dres_dtype: Optional[torch.dtype],
                      centre: Optional[Tensor] = None, dcentre_dtype: Optional[torch.dtype] = None
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """torch.ops.recgen.affine_act_bwd: affine_act_bwd, (dy, dscale, dshift, dresidual, dcentre),
    with an empty tensor for each gradient not wanted (its dtype None). Not differentiable."""
    grad_dtypes = (dy_dtype, dscale_dtype, dshift_dtype, dres_dtype, dcentre_dtype)
    grads = affine_act_bwd(dout, out, y, scale, shift, residual, act, slope, grad_dtypes, centre)
    return tuple(missing_output(dout) if g is None else g for g in grads)


def affine_act_grads(dout, out, y, scale, shift, residual, act, slope, grad_dtypes, centre=None):
    """affine_act_bwd through torch.ops.recgen.affine_act_bwd (traced by torch.compile): same
    arguments and results (one per entry of grad_dtypes: 4, or 5 with dcentre's dtype last),
    None for each gradient not wanted."""
    if len(grad_dtypes) not in (4, 5):
        raise ValueError(f"affine_act_grads: grad_dtypes must have 4 or 5 entries, got {len(grad_dtypes)}")
    dy_dtype, dscale_dtype, dshift_dtype, dres_dtype, dcentre_dtype = (*grad_dtypes, None)[:5]
    grads = torch.ops.recgen.affine_act_bwd(dout, out, y, scale, shift, residual, act, slope, dy_dtype,
                                            dscale_dtype, dshift_dtype, dres_dtype, centre, dcentre_dtype)
    return tuple(None if dt is None else g for g, dt in zip(grads, grad_dtypes))


class AffineActFunction(torch.autograd.Function):
    """out = act((y - centre[n, c]) * scale[n, c] + shift[n, c] + residual): the autograd of
    torch.ops.recgen.affine_act (registered below, so eager, `AffineActFunction.apply` and
    compiled graphs share this backward).

    Inputs: y (N, C, H, W); scale, shift (N, C) or None (stride 0 over N is fine); residual
    (N, C, H, W) or None; act ('none' | 'relu' | 'leaky_relu'); slope (float); centre (N, C) or
    None, the op's last argument (optional: `apply` takes 6 or 7 arguments). Output (N, C, H, W)
    laid out like y, in y's dtype. Only what the backward reads is saved.
    """

    @staticmethod
    def forward(y, scale, shift, residual, act, slope, centre=None):
        return torch.ops.recgen.affine_act(y, scale, shift, residual, act, slope, centre)

    @staticmethod
    def setup_context(ctx, inputs, output):
        y, scale, shift, residual, act, slope, *rest = inputs
        centre = rest[0] if rest else None
        z_mask = _mask_from_z(act, slope)
        need_dy, need_dscale, need_dshift, need_dres = ctx.needs_input_grad[:4]
        need_dcentre = centre is not None and len(ctx.needs_input_grad) > 6 and ctx.needs_input_grad[6]
        ctx.save_for_backward(
            output if act != "none" and not z_mask else None,
            y if z_mask or need_dscale else None,
            scale if z_mask or need_dy or need_dcentre else None,
            shift if z_mask else None,
            residual if z_mask else None,
            centre if z_mask or need_dscale else None,
            *(y, scale, shift, residual, centre),  # the inputs, for a backward with create_graph=True
        )
        ctx.act, ctx.slope = act, slope
        ctx.grad_dtypes = tuple(t.dtype if t is not None and need else None for t, need in
                                zip((y, scale, shift, residual, centre),
                                    (need_dy, need_dscale, need_dshift, need_dres, need_dcentre)))

    @staticmethod
    def backward(ctx, dout):
        out, y, scale, shift, residual, centre, *inputs = ctx.saved_tensors
        needs = (*ctx.needs_input_grad[:4], ctx.grad_dtypes[4] is not None)
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            dy, dscale, dshift, dres, dcentre = recomputed_affine_grads(dout, inputs, needs, ctx.act, ctx.slope)
        else:
            dy, dscale, dshift, dres, dcentre = affine_act_grads(dout, out, y, scale, shift, residual, ctx.act,
                                                                 ctx.slope, ctx.grad_dtypes, centre)
        # One per input: (y, scale, shift, residual, act, slope[, centre]); the dispatcher drops a
        # centre left at its default, and `apply` may be called without one.
        return (dy, dscale, dshift, dres, None, None, dcentre)[:len(ctx.needs_input_grad)]


register_function("affine_act", AffineActFunction)


def recomputed_affine_grads(dout, inputs, needs, act, slope) -> tuple:
    """AffineActFunction's backward when it runs with create_graph=True (double backward): the
    forward recomputed through the reference (recgen.reference.conv.affine_act) under autograd,
    in float32 (float64 stays), so the gradients returned are differentiable.

    inputs: (y, scale, shift, residual, centre), None where absent; needs: whether each wants a
    gradient. Returns one gradient (or None) per input."""
    from recgen.reference.conv import affine_act as reference_affine_act

    inputs = tuple(None if t is None else t.view_as(t) for t in inputs)  # one per argument (see conv2d)
    compute = torch.promote_types(inputs[0].dtype, torch.float32)
    y, scale, shift, residual, centre = [None if t is None else t.to(compute) for t in inputs]
    out = reference_affine_act(y, scale, shift, residual, act, slope, centre=centre)
    wanted = [t for t, need in zip(inputs, needs) if need and t is not None]
    found = iter(torch.autograd.grad(out, wanted, dout.to(out.dtype), create_graph=True, allow_unused=True)
                 if wanted else ())
    return tuple(next(found, None) if need and t is not None else None for t, need in zip(inputs, needs))


def _check_tensor(name, t, y, shapes, expected):
    """Raise a RuntimeError naming `name` unless t is a float tensor on y's device with a shape
    in `shapes` (the exact shapes accepted, described by `expected`)."""
    if not isinstance(t, torch.Tensor):
        raise RuntimeError(f"affine_act: {name} must be a tensor or None, got {type(t).__name__}")
    if t.dtype not in DTYPES:
        raise RuntimeError(f"affine_act: {name} dtype must be one of float32, float16, bfloat16, got {t.dtype}")
    if t.device != y.device:
        raise RuntimeError(f"affine_act: {name} must be on {y.device} like y, got {t.device}")
    if tuple(t.shape) not in shapes:
        raise RuntimeError(f"affine_act: {name} must have shape {expected}, got {tuple(t.shape)}")


def checked_affine_act(y, scale=None, shift=None, residual=None, act="none", slope=0.01, centre=None):
    """out = act((y - centre[n, c]) * scale[n, c] + shift[n, c] + residual) with fused Triton
    kernels: the contract of recgen.reference.conv.affine_act, differentiable in y, scale, shift,
    residual, centre.

    y: (N, C, H, W), any strides (channels-last memory is the fast case); centre, scale, shift:
    (N, C), or (1, C) / (C,) for one vector shared by all images (expanded, so their gradient is
    summed over N); residual: (N, C, H, W) or None; act: 'none' | 'relu' | 'leaky_relu' (with
    `slope`). A centre (e.g. the batch mean) is subtracted in float32 before the scale, so that
    a normalisation with |mean| >> std loses nothing to cancellation (see the module docstring).
    Tensors are float32/float16/bfloat16 on one device (CUDA, or CPU under TRITON_INTERPRET=1);
    the output is laid out like y, in y's dtype, as the reference's.

    >>> y = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last)
    >>> out = checked_affine_act(y, torch.rand(2, 8), torch.randn(2, 8), act="relu")
    >>> mean, rstd = y.mean((2, 3)), y.var((2, 3), correction=0).add(1e-5).rsqrt()
    >>> normalised = checked_affine_act(y, rstd, centre=mean)
    """
    if act not in ACT_CODES:
        raise ValueError(f"affine_act: unknown activation {act!r}; expected one of {ACTIVATIONS}")
    slope = float(slope)
    if not isinstance(y, torch.Tensor) or y.dim() != 4:
        got = f"{y.dim()}-D shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise RuntimeError(f"affine_act: y must be a 4-D (N, C, H, W) tensor, got {got}")
    N, C = y.shape[:2]
    _check_tensor("y", y, y, {tuple(y.shape)}, "(N, C, H, W)")
    if not kernels_runnable(y):
        raise RuntimeError(f"affine_act: y must be a CUDA tensor (or a CPU tensor with TRITON_INTERPRET=1 "
                           f"set before importing recgen), got device {y.device}")
    vectors = {}
    for name, t in (("centre", centre), ("scale", scale), ("shift", shift)):
        if t is not None:
            _check_tensor(name, t, y, {(N, C), (1, C), (C,)}, f"(N, C) = {(N, C)}, (1, C) or (C,) with C = {C}")
            t = t.expand(N, C)
        vectors[name] = t
    if residual is not None:
        _check_tensor("residual", residual, y, {tuple(y.shape)}, f"{tuple(y.shape)} like y")
    return torch.ops.recgen.affine_act(y, vectors["scale"], vectors["shift"], residual, act, slope,
                                       vectors["centre"])
