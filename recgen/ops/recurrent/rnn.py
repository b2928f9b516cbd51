"""The Elman RNN recurrence (tanh or relu): launchers, torch.library ops and the autograd Function.

Name chain, as called: _rnn_fwd_kernel (kernels/recurrent/rnn.py) -> rnn_fwd ->
torch.ops.recgen.rnn_fwd (rnn_fwd_op; its autograd: RNNFunction) -> rnn_layer (one layer, all its
directions in one launch) -> recgen.functional.rnn -> recgen.nn.RNN; the cell modules reach
rnn_layer through rnn_direction. Backward: RNNFunction.backward -> torch.ops.recgen.rnn_bwd ->
rnn_bwd -> _rnn_bwd_kernel. In the persistent mode (modes.py) rnn_fwd and rnn_bwd call
rnn_fwd_persistent / rnn_bwd_persistent (below), which run _rnn_fwd_persistent_kernel /
_rnn_bwd_persistent_kernel (kernels/recurrent/rnn_persistent.py) or decline, and then the single-
program kernel runs.

Tensors of a layer's D directions are stacked on a leading axis: h0 (D, B, H), w_hh (D, H, H);
xw (T, B, D*H) and y (T, B, D*H) hold the directions side by side.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from recgen.ops.common.launch import dot_flags, launch, new_output
from recgen.ops.recurrent.modes import choose_mode, recurrence_config
from recgen.ops.recurrent.persistent import exchange_state, run_persistent
from recgen.ops.common.library import missing_output, check_saved, register_op, owned_copy, needs_saving, register_function
from recgen.ops.recurrent.shared import (
    bmm_t, direction_major, h_prev_directions, layer_grid, lengths_arg, ping_pong_state,
    projected_inputs, recomputed_grads, stacked, directions_side_by_side, zeros_if_none,
)

NONLINEARITIES = ("tanh", "relu")


def _relu_flag(nonlinearity: str) -> bool:
    """The kernels' RELU constexpr; an unknown nonlinearity raises before anything is launched."""
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'; expected 'tanh' or 'relu'")
    return nonlinearity == "relu"


def rnn_fwd(xw, h0, w_hh, lengths, first_reverse, nonlinearity, save=True):
    """Run the Elman time loop of D directions in one launch (direction d > 0 runs reversed,
    direction 0 too when first_reverse).

    xw: (T, B, D*H) input projection with both biases; h0: (D, B, H); w_hh: (D, H, H);
    lengths: (B,) or None; nonlinearity: 'tanh' | 'relu'. Returns y (T, B, D*H) in xw's dtype,
    h_n (D, B, H) float32 and the saved activations (D, T, B, H) float32 (zero at padding; None,
    and never written, with save=False).
    """
    relu = _relu_flag(nonlinearity)
    from recgen.kernels.recurrent.rnn import _rnn_fwd_kernel

    T, B, _ = xw.shape
    D, H, _ = w_hh.shape
    cfg = recurrence_config(1, H, H, w_hh.dtype, batch=B, persistent_capable=True)

    def prepare():
        y = new_output((T, B, D * H), xw.dtype, xw.device)
        act = new_output((D, T, B, H), torch.float32, xw.device) if save else None
        return dict(
            xw_ptr=xw, w_hh_ptr=w_hh.contiguous(), lengths_ptr=lengths_arg(lengths, xw),
            y_ptr=y, act_ptr=act if save else y, h_state_ptr=ping_pong_state(h0), T=T, B=B, H=H,
            stride_xt=xw.stride(0), stride_xb=xw.stride(1), stride_yt=y.stride(0), stride_yb=y.stride(1),
            first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, RELU=relu, SAVE=bool(save),
            **dot_flags(w_hh.dtype, "rnn"))

    args = prepare()
    tiles, try_persistent = choose_mode("rnn_fwd", _rnn_fwd_kernel, cfg, args)
    if try_persistent:
        args = None  # released before the persistent launcher allocates its own outputs
        out = rnn_fwd_persistent(xw, h0, w_hh, lengths, first_reverse, nonlinearity, save, cfg.persistent)
        if out is not None:
            return out
        args = prepare()
    launch("rnn_fwd", _rnn_fwd_kernel, layer_grid(B, D), **args, **tiles.args())
    return args["y_ptr"], args["h_state_ptr"][:, T % 2], args["act_ptr"] if save else None


def rnn_bwd(dy, dhn, act, w_hh, lengths, first_reverse, nonlinearity):
    """Back-propagation through time of D directions in one launch, in reverse step order.

    dy: (D, T, B, H) contiguous; dhn: (D, B, H); act: the forward's saved activations.
    Returns dpre (D, T, B, H) float32 (gradient of the pre-activation, i.e. of xw; zero at
    padding) and dh0 (D, B, H) float32.
    """
    relu = _relu_flag(nonlinearity)
    from recgen.kernels.recurrent.rnn import _rnn_bwd_kernel

    D, T, B, H = act.shape
    cfg = recurrence_config(1, H, H, w_hh.dtype, batch=B, persistent_capable=True)

    def prepare():
        return dict(
            dy_ptr=dy, act_ptr=act, w_hh_ptr=w_hh.contiguous(), lengths_ptr=lengths_arg(lengths, act),
            dpre_ptr=new_output((D, T, B, H), torch.float32, act.device), dh_state_ptr=ping_pong_state(dhn),
            T=T, B=B, H=H, first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, RELU=relu,
            **dot_flags(w_hh.dtype, "rnn"))

    args = prepare()
    tiles, try_persistent = choose_mode("rnn_bwd", _rnn_bwd_kernel, cfg, args)
    if try_persistent:
        args = None  # released before the persistent launcher allocates its own outputs
        out = rnn_bwd_persistent(dy, dhn, act, w_hh, lengths, first_reverse, nonlinearity, cfg.persistent)
        if out is not None:
            return out
        args = prepare()
    launch("rnn_bwd", _rnn_bwd_kernel, layer_grid(B, D), **args, **tiles.args())
    return args["dpre_ptr"], args["dh_state_ptr"][:, T % 2]


# ---- the persistent mode (recgen/ops/recurrent/persistent.py): the same inputs and outputs ----


def rnn_fwd_persistent(xw, h0, w_hh, lengths, first_reverse, nonlinearity, save, plans: tuple):
    """rnn_fwd (recgen/ops/recurrent/rnn.py) in the persistent mode: the same inputs and outputs. Returns
    None, having launched nothing, where lstm_fwd_persistent would."""
    from recgen.kernels.recurrent.rnn_persistent import _rnn_fwd_persistent_kernel

    relu = _relu_flag(nonlinearity)
    T, B, _ = xw.shape
    D, H, _ = w_hh.shape
    y = new_output((T, B, D * H), xw.dtype, xw.device)
    act = new_output((D, T, B, H), torch.float32, xw.device) if save else None
    h_state, h_carry = exchange_state(h0, w_hh.dtype)
    args = dict(
        xw_ptr=xw, w_hh_ptr=w_hh.contiguous(), lengths_ptr=lengths_arg(lengths, xw), y_ptr=y,
        act_ptr=act if save else y, h_state_ptr=h_state, h_carry_ptr=h_carry, T=T, B=B, H=H,
        stride_xt=xw.stride(0), stride_xb=xw.stride(1), stride_yt=y.stride(0), stride_yb=y.stride(1),
        first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, RELU=relu, SAVE=bool(save),
        **dot_flags(w_hh.dtype, "rnn"),
    )
    if not run_persistent("rnn_fwd_persistent", _rnn_fwd_persistent_kernel, plans, (B, H, D), T, xw.device,
                          args):
        return None
    return y, h_carry, act


def rnn_bwd_persistent(dy, dhn, act, w_hh, lengths, first_reverse, nonlinearity, plans: tuple):
    """rnn_bwd (recgen/ops/recurrent/rnn.py) in the persistent mode: the same inputs and outputs (dpre,
    dh0). Returns None, having launched nothing, where lstm_fwd_persistent would."""
    from recgen.kernels.recurrent.rnn_persistent import _rnn_bwd_persistent_kernel

    relu = _relu_flag(nonlinearity)
    D, T, B, H = act.shape
    dpre = new_output((D, T, B, H), torch.float32, act.device)
    dh_state = ping_pong_state(dhn)
    args = dict(
        dy_ptr=dy, act_ptr=act, w_hh_ptr=w_hh.contiguous(), lengths_ptr=lengths_arg(lengths, act),
        dpre_ptr=dpre, dh_state_ptr=dh_state, T=T, B=B, H=H,
        first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, RELU=relu, **dot_flags(w_hh.dtype, "rnn"),
    )
    if not run_persistent("rnn_bwd_persistent", _rnn_bwd_persistent_kernel, plans, (B, H, D), T, act.device, args,
                          phases=True):
        return None
    return dpre, dh_state[:, T % 2]


def _rnn_fwd_fake(xw, h0, w_hh, lengths, first_reverse, nonlinearity, save):
    T, B, _ = xw.shape
    D, H, _ = w_hh.shape
    return (xw.new_empty((T, B, D * H)), xw.new_empty((D, B, H)),
            xw.new_empty((D, T, B, H), dtype=torch.float32) if save else missing_output(xw))


@register_op("rnn_fwd", "(Tensor xw, Tensor h0, Tensor w_hh, Tensor? lengths, bool first_reverse, "
        "str nonlinearity, bool save) -> (Tensor, Tensor, Tensor)", _rnn_fwd_fake)
def rnn_fwd_op(xw: Tensor, h0: Tensor, w_hh: Tensor, lengths: Optional[Tensor], first_reverse: bool,
               nonlinearity: str, save: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """torch.ops.recgen.rnn_fwd: rnn_fwd with h_n in xw's dtype. Returns y, h_n, act (empty with
    save=False); differentiable in xw, h0, w_hh when save=True."""
    y, hn, act = rnn_fwd(xw, h0, w_hh, lengths, first_reverse, nonlinearity, save)
    return y, owned_copy(hn, xw.dtype), act if save else missing_output(xw)


def _rnn_bwd_fake(dy, dhn, act, w_hh, lengths, first_reverse, nonlinearity):
    return act.new_empty(act.shape), act.new_empty((act.shape[0],) + act.shape[2:])


@register_op("rnn_bwd", "(Tensor dy, Tensor dhn, Tensor act, Tensor w_hh, Tensor? lengths, bool first_reverse, "
        "str nonlinearity) -> (Tensor, Tensor)", _rnn_bwd_fake)
def rnn_bwd_op(dy: Tensor, dhn: Tensor, act: Tensor, w_hh: Tensor, lengths: Optional[Tensor], first_reverse: bool,
               nonlinearity: str) -> Tuple[Tensor, Tensor]:
    """torch.ops.recgen.rnn_bwd: rnn_bwd (dpre, dh0 float32)."""
    dpre, dh0 = rnn_bwd(dy, dhn, act, w_hh, lengths, first_reverse, nonlinearity)
    return dpre, owned_copy(dh0, torch.float32)


class RNNFunction(torch.autograd.Function):
    """The Elman recurrence of one layer's D directions, given the input projection xw: the
    autograd of torch.ops.recgen.rnn_fwd (registered below).

    Inputs: xw (T, B, D*H), h0 (D, B, H), w_hh (D, H, H), lengths (B,) or None, first_reverse
    (bool), nonlinearity ('tanh' | 'relu'), save (bool: False only when nothing is
    differentiated). Outputs y (T, B, D*H), h_n (D, B, H) in xw's dtype and the saved float32
    activations (not differentiable).

    >>> y, h_n, _ = RNNFunction.apply(xw, h0, w_hh, None, False, 'tanh')
    """

    @staticmethod
    def forward(xw, h0, w_hh, lengths, first_reverse, nonlinearity, save=True):
        return torch.ops.recgen.rnn_fwd(xw, h0, w_hh, lengths, first_reverse, nonlinearity, save)

    @staticmethod
    def setup_context(ctx, inputs, output):
        xw, h0, w_hh, lengths, first_reverse, nonlinearity, save = inputs
        y, _, act = output
        # xw only for a backward with create_graph=True (recomputed_grads).
        ctx.save_for_backward(y, h0, w_hh, act, lengths, xw)
        ctx.first_reverse, ctx.nonlinearity, ctx.save = first_reverse, nonlinearity, save
        ctx.mark_non_differentiable(act)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, dy, dhn, _act):
        y, h0, w_hh, act, lengths, xw = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            need = ctx.needs_input_grad
            dxw, dh0, _, dw_hh, _, _ = recomputed_grads(
                f"rnn_{ctx.nonlinearity}", (dy, dhn), (xw, h0, None, w_hh, None, None),
                (need[0], need[1], False, need[2], False, False), lengths, ctx.first_reverse)
            return dxw, dh0, dw_hh, None, None, None, None
        check_saved("rnn_fwd", ctx.save)
        D = w_hh.shape[0]
        dpre, dh0 = torch.ops.recgen.rnn_bwd(direction_major(zeros_if_none(dy, y), D), zeros_if_none(dhn, h0),
                                             act, w_hh, lengths, ctx.first_reverse, ctx.nonlinearity)
        dxw = directions_side_by_side(dpre).to(y.dtype) if ctx.needs_input_grad[0] else None
        dh0 = dh0.to(h0.dtype) if ctx.needs_input_grad[1] else None
        dw_hh = None
        if ctx.needs_input_grad[2]:
            # The float32 activations rather than y: the exact states the forward read.
            act_td = directions_side_by_side(act)
            h_prev = h_prev_directions(act_td, h0.to(torch.float32), lengths, ctx.first_reverse)
            dw_hh = bmm_t(dpre, h_prev).to(w_hh.dtype)
        return dxw, dh0, dw_hh, None, None, None, None


register_function("rnn_fwd", RNNFunction)


def rnn_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=None, first_reverse=False, nonlinearity="tanh"):
    """One Elman layer, all D directions in one launch each way. x: (T, B, I); h0: (D, B, H);
    w_ih, w_hh, b_ih, b_hh: lists of D per-direction tensors (biases None when absent).
    Returns y (T, B, D*H), h_n (D, B, H)."""
    _relu_flag(nonlinearity)
    xw = projected_inputs(x, w_ih, b_ih, b_hh, fold_hidden_bias=True)
    w_hh = stacked(w_hh)
    save = needs_saving(xw, h0, w_hh)
    y, h_n, _ = torch.ops.recgen.rnn_fwd(xw, h0, w_hh, lengths, first_reverse, nonlinearity, save)
    return y, h_n


def rnn_direction(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False,
                  nonlinearity="tanh"):
    """One Elman RNN layer in one direction on the Triton path; same contract as
    recgen.reference.recurrent_direction('rnn_tanh' | 'rnn_relu', ...) without the c_n.

    x: (T, B, I); h0: (B, H); w_ih: (H, I); w_hh: (H, H); b_ih, b_hh: (H,) or None;
    lengths: (B,) valid steps per batch column or None. Returns y (T, B, H), h_n (B, H).

    >>> y, h_n = rnn_direction(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity='relu')
    """
    y, h_n = rnn_layer(x, h0.unsqueeze(0), [w_ih], [w_hh], [b_ih], [b_hh], lengths, reverse,
                       nonlinearity)
    return y, h_n[0]
