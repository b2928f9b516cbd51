"""The dense layer out = act(x @ W^T + bias + residual): launchers of its forward and backward
kernels, their torch.library ops, and the autograd Function.

Name chain, as called: _linear_fwd_kernel (kernels/dense/linear.py) -> linear_fwd ->
torch.ops.recgen.linear_act (linear_act_op; its autograd: LinearActFunction) -> checked_linear_act
(the argument checks) -> recgen.functional.linear_act -> recgen.nn.Linear. Backward:
LinearActFunction.backward -> torch.ops.recgen.linear_bwd_data (linear_bwd_data ->
_linear_bwd_data_kernel) and torch.ops.recgen.linear_bwd_weight (linear_bwd_weight ->
_linear_bwd_weight_kernel, which also gives d bias and d residual).

Shapes: x (..., I) with any leading dimensions, flattened to M rows here as nn.Linear takes them
(a view when they flatten, any strides; the kernels read every tensor through its strides, so
nn.Linear's (O, I) weight is never transposed or copied); weight (O, I); bias (O,); residual
(..., O). The output is (..., O), contiguous, in x's dtype; math is float32 (accumulation and
epilogue). Dots: float32 uses TF32 exactly when torch's own matmul would (dot_flags(dtype,
"matmul"), torch.backends.cuda.matmul's flag, as nn.Linear).

What the backward keeps: x and the weight (as nn.Linear's backward does), bias and residual (for
a backward with create_graph=True), and for the activation's derivative the forward's OUTPUT:
relu, tanh, sigmoid and leaky_relu with slope >= 0 have their derivative as a function of the
output (torch's own backward formulas), so no pre-activation tensor is ever written. leaky_relu
with a negative slope maps both signs of z to a positive output, so its forward also writes the
sign bit z > 0 as an int8 tensor like the output (1 byte per element, the second output of
torch.ops.recgen.linear_act, empty otherwise), and its backward reads that instead of the output
(cheaper than recomputing the GEMM). The backward runs at most two launches: the data gradient,
and the weight gradient (whose first column of programs also writes d residual = dz and the
per-program partial sums of dz for d bias; all partial sums are reduced by torch in a fixed order,
no atomics).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import triton
from torch import Tensor

from recgen.backend import KERNEL_DTYPES, interpreting, kernels_runnable
from recgen.ops.common.checks import check_residual
from recgen.ops.common.launch import DENSE_ACT_CODES, POISON, dot_flags, new_output
from recgen.ops.common.library import missing_output, register_function, register_op
from recgen.ops.common.tiling import (dense_blocks, dense_bwd_data_blocks, dense_bwd_data_tiles,
                                      dense_bwd_weight_config, dense_tiles, launch_chosen)
from recgen.reference.dense import ACTIVATIONS

DTYPES = KERNEL_DTYPES


def uses_sign(activation: str, negative_slope: float) -> bool:
    """Whether the backward needs the sign bits of z rather than the output: leaky_relu with a
    negative slope (the output's sign is not z's)."""
    return activation == "leaky_relu" and negative_slope < 0


def check_activation(activation, op: str = "linear_act") -> str:
    """The activation name ('none' for None), or a ValueError."""
    act = "none" if activation is None else activation
    if act not in DENSE_ACT_CODES:
        raise ValueError(f"{op}: unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    return act


def check_linear_act(x, weight, bias, residual, activation, op: str = "linear_act") -> tuple:
    """Check linear_fwd's arguments (metadata only, so the op's fake runs it too); returns (M, I, O)."""
    check_activation(activation, op)
    if x.dim() < 1:
        raise RuntimeError(f"{op}: x must have at least one dimension (..., I), got a 0-D tensor")
    if weight.dim() != 2:
        raise RuntimeError(f"{op}: weight must be 2-D (O, I), got shape {tuple(weight.shape)}")
    O, I = weight.shape
    if x.shape[-1] != I:
        raise RuntimeError(f"{op}: x must have I={I} features in its last dimension like the weight's "
                           f"{tuple(weight.shape)}, got shape {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise RuntimeError(f"{op}: x must be one of {DTYPES}, got {x.dtype}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise RuntimeError(f"{op}: {name} must have x's dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise RuntimeError(f"{op}: {name} must be on {x.device} like x, got {t.device}")
    if bias is not None and tuple(bias.shape) != (O,):
        raise RuntimeError(f"{op}: bias must have shape {(O,)}, got {tuple(bias.shape)}")
    if residual is not None:
        check_residual(op, residual, (*x.shape[:-1], O), x, DTYPES, "the output's shape")
    return math.prod(x.shape[:-1]), I, O


def _new_sign(shape, device) -> Tensor:
    """The int8 sign-bit output; poisoned with 2 (neither bit) where outputs are NaN-poisoned
    (recgen.ops.common.launch.poisoned), so an unwritten element shows up."""
    sign = torch.empty(shape, dtype=torch.int8, device=device)
    if interpreting() or POISON["on"]:
        sign.fill_(2)
    return sign


def _strides(t, names: str) -> dict:
    """{stride_<name>: stride} of a 2-D tensor; zeros for None (its pointer is never read)."""
    strides = (0, 0) if t is None else t.stride()
    return {f"stride_{n}": s for n, s in zip(names.split(), strides)}


def linear_fwd(x, weight, bias=None, residual=None, activation="none", negative_slope=0.01):
    """out = act(x @ weight^T + bias + residual) in one launch; same contract as
    recgen.reference.dense.linear_act.

    x: (..., I) float32/float16/bfloat16, any strides; weight: (O, I), same dtype and device;
    bias: (O,) or None, same dtype; residual: (..., O) or None, any of those dtypes.
    Returns (out, sign): out (..., O) contiguous in x's dtype; sign (..., O) int8, z > 0, for
    leaky_relu with a negative slope (what its backward reads), else None.
    Unknown activation names raise ValueError; shapes, dtypes and devices RuntimeError.

    Example: out, _ = linear_fwd(torch.randn(8, 20, 64), w, b, activation="tanh")
    """
    from recgen.kernels.dense.linear import _linear_fwd_kernel

    activation = check_activation(activation)
    M, I, O = check_linear_act(x, weight, bias, residual, activation)
    lead = x.shape[:-1]
    x2 = x.reshape(M, I)
    r2 = residual.reshape(M, O) if residual is not None else None
    out = new_output((M, O), x.dtype, x.device)
    save_sign = uses_sign(activation, negative_slope)
    sign = _new_sign((M, O), x.device) if save_sign else None
    block_m, _, block_o, _ = dense_blocks(M, I, O)
    launch_chosen(
        "linear_fwd", _linear_fwd_kernel, dense_tiles(M, I, O), (triton.cdiv(M, block_m), triton.cdiv(O, block_o)),
        x_ptr=x2, w_ptr=weight, b_ptr=bias if bias is not None else out,  # out: an unread stand-in
        res_ptr=r2 if r2 is not None else out, out_ptr=out, sign_ptr=sign if save_sign else out,
        M=M, I=I, O=O, **_strides(x2, "xm xi"), **_strides(weight, "wo wi"), **_strides(r2, "rm ro"),
        **_strides(out, "om oo"), slope=float(negative_slope),
        HAS_BIAS=bias is not None, HAS_RESIDUAL=r2 is not None, ACT=DENSE_ACT_CODES[activation],
        SAVE_SIGN=save_sign, **dot_flags(x.dtype, "matmul"),
    )
    return out.view(*lead, O), (sign.view(*lead, O) if save_sign else None)


def _check_bwd(op, dout, out, sign, activation, negative_slope, weight_or_x: Tensor):
    """Check a backward launcher's arguments; returns (M, O, the activation's name)."""
    activation = check_activation(activation, op)
    if dout.dim() < 1:
        raise RuntimeError(f"{op}: dout must have at least one dimension (..., O), got a 0-D tensor")
    O = dout.shape[-1]
    if uses_sign(activation, negative_slope):
        if sign is None or sign.shape != dout.shape or sign.dtype != torch.int8:
            raise RuntimeError(f"{op}: leaky_relu with a negative slope needs the forward's int8 sign bits "
                               f"shaped like dout {tuple(dout.shape)}")
    elif activation != "none" and (out is None or out.shape != dout.shape):
        raise RuntimeError(f"{op}: activation {activation!r} needs the forward's output shaped like dout "
                           f"{tuple(dout.shape)}")
    if dout.device != weight_or_x.device:
        raise RuntimeError(f"{op}: dout must be on {weight_or_x.device}, got {dout.device}")
    return math.prod(dout.shape[:-1]), O, activation


def _bwd_operands(dout, out, sign, M, O, activation, negative_slope):
    """dout, out and sign as (M, O) views (copies where the leading dimensions do not flatten),
    and the pointer arguments and flags both backward kernels take."""
    g2 = dout.reshape(M, O)
    use_sign = uses_sign(activation, negative_slope)
    o2 = out.reshape(M, O) if out is not None and activation != "none" and not use_sign else None
    s2 = sign.reshape(M, O).contiguous() if use_sign else None
    ptrs = dict(dout_ptr=g2, out_ptr=o2 if o2 is not None else g2, sign_ptr=s2 if s2 is not None else g2)
    flags = dict(**_strides(g2, "gm go"), **_strides(o2, "om oo"), slope=float(negative_slope),
                 ACT=DENSE_ACT_CODES[activation], USE_SIGN=use_sign)
    return ptrs, flags


def linear_bwd_data(dout, out, sign, weight, activation="none", negative_slope=0.01):
    """dx = (dout * act'(z)) @ weight, act' from the forward's output `out` (or its `sign` bits
    for leaky_relu with a negative slope; either may be None where not read).

    dout: (..., O), any strides; weight: (O, I). Returns dx (..., I) contiguous in the weight's dtype.
    Example: dx = linear_bwd_data(dout, out, None, w, "sigmoid").
    """
    from recgen.kernels.dense.linear import _linear_bwd_data_kernel

    op = "linear_bwd_data"
    M, O, activation = _check_bwd(op, dout, out, sign, activation, negative_slope, weight)
    if weight.dim() != 2 or weight.shape[0] != O:
        raise RuntimeError(f"{op}: weight must be ({O}, I) for dout's {O} features, got {tuple(weight.shape)}")
    I = weight.shape[1]
    ptrs, flags = _bwd_operands(dout, out, sign, M, O, activation, negative_slope)
    dx = new_output((M, I), weight.dtype, weight.device)
    block_m, block_i, _, _ = dense_bwd_data_blocks(M, I, O)
    launch_chosen(
        op, _linear_bwd_data_kernel, dense_bwd_data_tiles(M, I, O), (triton.cdiv(M, block_m), triton.cdiv(I, block_i)),
        **ptrs, w_ptr=weight, dx_ptr=dx, M=M, I=I, O=O, **_strides(weight, "wo wi"), **_strides(dx, "dm di"),
        **flags, **dot_flags(weight.dtype, "matmul"),
    )
    return dx.view(*dout.shape[:-1], I)


def linear_bwd_weight(dout, out, sign, x, activation="none", negative_slope=0.01, weight_grad=True,
                      bias_dtype=None, residual_dtype=None):
    """The weight, bias and residual gradients of linear_act in one launch (and a torch sum of
    the per-program partial sums): dW = dz^T @ x, d bias = sum of dz over the rows, d residual =
    dz, with dz = dout * act'(z) (act' as in linear_bwd_data).

    dout: (..., O); x: (..., I) the forward's input, any strides. weight_grad: whether dW is
    wanted; bias_dtype / residual_dtype: the dtypes of d bias / d residual, None when not wanted.
    Returns (dW (O, I) in x's dtype, d bias (O,), d residual (..., O) contiguous), None where not wanted.
    Example: dw, db, _ = linear_bwd_weight(dout, out, None, x, "relu", bias_dtype=torch.float32).
    """
    from recgen.kernels.dense.linear import _linear_bwd_weight_kernel

    op = "linear_bwd_weight"
    M, O, activation = _check_bwd(op, dout, out, sign, activation, negative_slope, x)
    if x.dim() < 1 or tuple(x.shape[:-1]) != tuple(dout.shape[:-1]):
        raise RuntimeError(f"{op}: x must have dout's leading dimensions {tuple(dout.shape[:-1])}, "
                           f"got shape {tuple(x.shape)}")
    I = x.shape[-1]
    x2 = x.reshape(M, I)
    ptrs, flags = _bwd_operands(dout, out, sign, M, O, activation, negative_slope)
    cfg = dense_bwd_weight_config(M, I, O, weight_grad)
    dw_parts = new_output((cfg.split, O, I), torch.float32, x.device) if weight_grad else None
    db_parts = new_output((cfg.split, O), torch.float32, x.device) if bias_dtype is not None else None
    dres = new_output((M, O), residual_dtype, x.device) if residual_dtype is not None else None
    stand_in = ptrs["dout_ptr"]  # for the outputs not wanted (never written)
    # At least one program along I: with I == 0 the first column still writes d bias and d residual.
    i_tiles = max(1, triton.cdiv(I, cfg.block_i)) if weight_grad else 1
    launch_chosen(
        op, _linear_bwd_weight_kernel, cfg.tiles(), (triton.cdiv(O, cfg.block_o), i_tiles, cfg.split),
        **ptrs, x_ptr=x2, dw_ptr=dw_parts if weight_grad else stand_in,
        db_ptr=db_parts if db_parts is not None else stand_in, dres_ptr=dres if dres is not None else stand_in,
        M=M, I=I, O=O, M_PER_SPLIT=cfg.m_per_split, **_strides(x2, "xm xi"), **flags,
        HAS_DW=bool(weight_grad), HAS_DB=db_parts is not None, HAS_DRES=dres is not None,
        **dot_flags(x.dtype, "matmul"),
    )
    dw = db = None
    if weight_grad:  # one split: a copy, not a view of the scratch buffer (op outputs must be fresh)
        dw = dw_parts[0].to(x.dtype, copy=True) if cfg.split == 1 else dw_parts.sum(dim=0).to(x.dtype)
    if db_parts is not None:
        db = db_parts.sum(dim=0).to(bias_dtype)
    return dw, db, (dres.view(*dout.shape[:-1], O) if dres is not None else None)


# ---- torch.library registration (recgen/ops/common/library.py) -------------------------------

def _linear_act_fake(x, weight, bias, residual, activation, negative_slope):
    O = check_linear_act(x, weight, bias, residual, activation)[2]
    out = x.new_empty((*x.shape[:-1], O))
    if not uses_sign(activation, negative_slope):
        return out, missing_output(x)
    return out, x.new_empty((*x.shape[:-1], O), dtype=torch.int8)


@register_op("linear_act", "(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, str activation, "
             "float negative_slope) -> (Tensor, Tensor)", _linear_act_fake)
def linear_act_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor], activation: str,
                  negative_slope: float) -> Tuple[Tensor, Tensor]:
    """torch.ops.recgen.linear_act: linear_fwd returning (out, sign) always, sign empty unless
    activation is leaky_relu with a negative slope; differentiable in x, weight, bias and residual
    (LinearActFunction)."""
    out, sign = linear_fwd(x, weight, bias, residual, activation, negative_slope)
    return out, missing_output(x) if sign is None else sign


def _linear_bwd_data_fake(dout, out, sign, weight, activation, negative_slope):
    O = _check_bwd("linear_bwd_data", dout, out, sign, activation, negative_slope, weight)[1]
    if weight.dim() != 2 or weight.shape[0] != O:
        raise RuntimeError(f"linear_bwd_data: weight must be ({O}, I) for dout's {O} features, "
                           f"got {tuple(weight.shape)}")
    return weight.new_empty((*dout.shape[:-1], weight.shape[1]))


@register_op("linear_bwd_data", "(Tensor dout, Tensor? out, Tensor? sign, Tensor weight, str activation, "
             "float negative_slope) -> Tensor", _linear_bwd_data_fake)
def linear_bwd_data_op(dout: Tensor, out: Optional[Tensor], sign: Optional[Tensor], weight: Tensor, activation: str,
                       negative_slope: float) -> Tensor:
    """torch.ops.recgen.linear_bwd_data: linear_bwd_data; dx (..., I). Not differentiable."""
    return linear_bwd_data(dout, out, sign, weight, activation, negative_slope)


def _linear_bwd_weight_fake(dout, out, sign, x, activation, negative_slope, weight_grad, bias_dtype,
                            residual_dtype):
    _check_bwd("linear_bwd_weight", dout, out, sign, activation, negative_slope, x)
    O, I = dout.shape[-1], x.shape[-1]
    dw = x.new_empty((O, I)) if weight_grad else missing_output(x)
    db = x.new_empty((O,), dtype=bias_dtype) if bias_dtype is not None else missing_output(x)
    dres = x.new_empty(dout.shape, dtype=residual_dtype) if residual_dtype is not None else missing_output(x)
    return dw, db, dres


@register_op("linear_bwd_weight", "(Tensor dout, Tensor? out, Tensor? sign, Tensor x, str activation, "
             "float negative_slope, bool weight_grad, ScalarType? bias_dtype, ScalarType? residual_dtype) "
             "-> (Tensor, Tensor, Tensor)", _linear_bwd_weight_fake)
def linear_bwd_weight_op(dout: Tensor, out: Optional[Tensor], sign: Optional[Tensor], x: Tensor, activation: str,
                         negative_slope: float, weight_grad: bool, bias_dtype: Optional[torch.dtype],
                         residual_dtype: Optional[torch.dtype]) -> Tuple[Tensor, Tensor, Tensor]:
    """torch.ops.recgen.linear_bwd_weight: linear_bwd_weight with an empty tensor for each
    gradient not wanted. Not differentiable."""
    grads = linear_bwd_weight(dout, out, sign, x, activation, negative_slope, weight_grad, bias_dtype,
                              residual_dtype)
    return tuple(missing_output(x) if g is None else g for g in grads)


class LinearActFunction(torch.autograd.Function):
    """out, sign = linear_act(x, weight, bias, residual, activation, negative_slope): the autograd
    of torch.ops.recgen.linear_act (registered below, so eager calls, `LinearActFunction.apply`
    and compiled graphs share this backward). Saved: see the module docstring."""

    @staticmethod
    def forward(x, weight, bias, residual, activation, negative_slope):
        return torch.ops.recgen.linear_act(x, weight, bias, residual, activation, negative_slope)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, residual, activation, negative_slope = inputs
        out, sign = output
        by_sign = uses_sign(activation, negative_slope)
        # x and weight as nn.Linear's backward keeps them; bias and residual only for a backward
        # with create_graph=True (saving a tensor autograd already holds costs no memory).
        ctx.save_for_backward(x, weight, bias, residual, out if activation != "none" and not by_sign else None,
                              sign if by_sign else None)
        ctx.activation, ctx.negative_slope = activation, negative_slope
        ctx.mark_non_differentiable(sign)

    @staticmethod
    def backward(ctx, dout, dsign=None):
        x, weight, bias, residual, out, sign = ctx.saved_tensors
        need, act, slope = ctx.needs_input_grad, ctx.activation, ctx.negative_slope
        if dout is None:
            return (None,) * 6
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            return recomputed_linear_grads(dout, (x, weight, bias, residual), need[:4], act, slope) + (None, None)
        dx = torch.ops.recgen.linear_bwd_data(dout, out, sign, weight, act, slope) if need[0] else None
        bias_dtype = bias.dtype if bias is not None and need[2] else None
        residual_dtype = residual.dtype if residual is not None and need[3] else None
        dw = db = dres = None
        if need[1] or bias_dtype is not None or residual_dtype is not None:
            dw, db, dres = torch.ops.recgen.linear_bwd_weight(dout, out, sign, x, act, slope, bool(need[1]),
                                                              bias_dtype, residual_dtype)
        return (dx, dw if need[1] else None, db if bias_dtype is not None else None,
                dres if residual_dtype is not None else None, None, None)


register_function("linear_act", LinearActFunction)


def recomputed_linear_grads(dout, inputs, needs, activation, negative_slope) -> tuple:
    """LinearActFunction's backward when it runs with create_graph=True (double backward): the
    forward recomputed through the reference (recgen.reference.dense.linear_act: torch.matmul and
    torch's activations) under autograd, in float32 (float64 stays), so the gradients returned are
    differentiable; the kernels stay the path without create_graph."""
    from recgen.reference.dense import linear_act as reference_linear_act

    inputs = tuple(None if t is None else t.view_as(t) for t in inputs)  # one per argument (see conv2d)
    compute = torch.promote_types(inputs[0].dtype, torch.float32)
    x, weight, bias, residual = (None if t is None else t.to(compute) for t in inputs)
    out = reference_linear_act(x, weight, bias, activation, negative_slope, residual)
    wanted = [t for t, need in zip(inputs, needs) if need and t is not None]
    found = iter(torch.autograd.grad(out, wanted, dout.to(out.dtype), create_graph=True, allow_unused=True)
                 if wanted else ())
    return tuple(next(found, None) if need and t is not None else None for t, need in zip(inputs, needs))


def checked_linear_act(x, weight, bias=None, residual=None, activation="none", negative_slope=0.01):
    """act(x @ weight^T + bias + residual) with the fused Triton kernels: the contract of
    recgen.reference.dense.linear_act, differentiable in x, weight, bias and residual.

    x: (..., I); weight: (O, I); bias: (O,) or None; residual: (..., O) or None; activation:
    'none' (or None) | 'relu' | 'leaky_relu' (with negative_slope) | 'tanh' | 'sigmoid'.
    Tensors are float32/float16/bfloat16 on one device (CUDA, or CPU under TRITON_INTERPRET=1).

    >>> out = checked_linear_act(torch.randn(4, 6), torch.randn(3, 6), torch.randn(3), activation="relu")
    """
    activation = check_activation(activation)
    negative_slope = float(negative_slope)
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("residual", residual)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"linear_act: {name} must be a tensor{'' if name in ('x', 'weight') else ' or None'}, "
                            f"got {type(t).__name__}")
    if x is None or weight is None:
        raise TypeError("linear_act: x and weight must be tensors, got None")
    if not kernels_runnable(x):
        raise RuntimeError(f"linear_act: x must be a CUDA tensor (or a CPU tensor with TRITON_INTERPRET=1 "
                           f"set before importing recgen), got device {x.device}")
    check_linear_act(x, weight, bias, residual, activation)
    return torch.ops.recgen.linear_act(x, weight, bias, residual, activation, negative_slope)[0]
