"""The GRU recurrence: launchers, torch.library ops and the autograd Function.

Name chain, as called: _gru_fwd_kernel (kernels/recurrent/gru.py) -> gru_fwd ->
torch.ops.recgen.gru_fwd (gru_fwd_op; its autograd: GRUFunction) -> gru_layer (one layer, all its
directions in one launch) -> recgen.functional.gru -> recgen.nn.GRU; the cell modules reach
gru_layer through gru_direction. Backward: GRUFunction.backward -> torch.ops.recgen.gru_bwd ->
gru_bwd -> _gru_bwd_kernel. In the persistent mode (modes.py) gru_fwd and gru_bwd call
gru_fwd_persistent / gru_bwd_persistent (below), which run _gru_fwd_persistent_kernel /
_gru_bwd_persistent_kernel (kernels/recurrent/gru_persistent.py) or decline, and then the single-
program kernel runs.

Tensors of a layer's D directions are stacked on a leading axis: h0 (D, B, H), w_hh (D, 3H, H),
b_hh (D, 3H); xw (T, B, D*3H) and y (T, B, D*H) hold the directions side by side.

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


def gru_fwd(xw, h0, w_hh, b_hh, lengths, first_reverse, save=True):
    """Run the GRU time loop of D directions in one launch (direction d > 0 runs reversed,
    direction 0 too when first_reverse).

    xw: (T, B, D*3H) input projection x W_ih^T + b_ih; h0: (D, B, H); w_hh: (D, 3H, H); b_hh:
    (D, 3H) or None (added inside the kernel, since b_hn sits inside r * (...)); lengths: (B,)
    or None. Returns y (T, B, D*H) in xw's dtype, h_n (D, B, H) float32 and the saved tensor
    (D, T, B, 4H) float32 holding r, z, n and gh_n = h W_hn^T + b_hn per step (None, and never
    written, with save=False).
    """
    from recgen.kernels.recurrent.gru import _gru_fwd_kernel

    T, B, _ = xw.shape
    D, G3, H = w_hh.shape
    cfg = recurrence_config(3, H, H, w_hh.dtype, batch=B, persistent_capable=True)

    def prepare():
        y = new_output((T, B, D * H), xw.dtype, xw.device)
        saved = new_output((D, T, B, 4 * H), torch.float32, xw.device) if save else None
        w_hh_c = w_hh.contiguous()
        return dict(
            xw_ptr=xw, w_hh_ptr=w_hh_c, b_hh_ptr=w_hh_c if b_hh is None else b_hh.contiguous(),
            lengths_ptr=lengths_arg(lengths, xw), y_ptr=y, saved_ptr=saved if save else y,
            h_state_ptr=ping_pong_state(h0), T=T, B=B, H=H,
            stride_xt=xw.stride(0), stride_xb=xw.stride(1), stride_yt=y.stride(0), stride_yb=y.stride(1),
            first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, HAS_BIAS=b_hh is not None,
            SAVE=bool(save), **dot_flags(w_hh.dtype, "rnn"))

    args = prepare()
    tiles, try_persistent = choose_mode("gru_fwd", _gru_fwd_kernel, cfg, args)
    if try_persistent:
        args = None  # released before the persistent launcher allocates its own outputs
        out = gru_fwd_persistent(xw, h0, w_hh, b_hh, lengths, first_reverse, save, cfg.persistent)
        if out is not None:
            return out
        args = prepare()
    launch("gru_fwd", _gru_fwd_kernel, layer_grid(B, D), **args, **tiles.args())
    return args["y_ptr"], args["h_state_ptr"][:, T % 2], args["saved_ptr"] if save else None


def gru_bwd(dy, dhn, saved, h_prev, w_hh, lengths, first_reverse):
    """Back-propagation through time of D directions in one launch, in reverse step order.

    dy: (D, T, B, H) contiguous; dhn: (D, B, H); saved: the forward's (D, T, B, 4H) tensor;
    h_prev: (D, T, B, H) from h_prev_directions. Returns dxw (D, T, B, 3H) float32 (gradient
    of xw), dghn (D, T, B, H) float32 (gradient of gh_n; the hidden-side pre-activation
    gradient is (dxw_r, dxw_z, dghn)) and dh0 (D, B, H) float32.
    """
    from recgen.kernels.recurrent.gru import _gru_bwd_kernel

    D, T, B, G4 = saved.shape
    H = G4 // 4
    cfg = recurrence_config(3, H, H, w_hh.dtype, batch=B, persistent_capable=True)

    def prepare():
        return dict(
            dy_ptr=dy, saved_ptr=saved, h_prev_ptr=h_prev.contiguous(), w_hh_ptr=w_hh.contiguous(),
            lengths_ptr=lengths_arg(lengths, saved),
            dxw_ptr=new_output((D, T, B, 3 * H), torch.float32, saved.device),
            dghn_ptr=new_output((D, T, B, H), torch.float32, saved.device), dh_state_ptr=ping_pong_state(dhn),
            T=T, B=B, H=H, first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None,
            **dot_flags(w_hh.dtype, "rnn"))

    args = prepare()
    tiles, try_persistent = choose_mode("gru_bwd", _gru_bwd_kernel, cfg, args)
    if try_persistent:
        args = None  # released before the persistent launcher allocates its own outputs
        out = gru_bwd_persistent(dy, dhn, saved, h_prev, w_hh, lengths, first_reverse, cfg.persistent)
        if out is not None:
            return out
        args = prepare()
    launch("gru_bwd", _gru_bwd_kernel, layer_grid(B, D), **args, **tiles.args())
    return args["dxw_ptr"], args["dghn_ptr"], args["dh_state_ptr"][:, T % 2]


# ---- the persistent mode (recgen/ops/recurrent/persistent.py): the same inputs and outputs ----


def gru_fwd_persistent(xw, h0, w_hh, b_hh, lengths, first_reverse, save, plans: tuple):
    """gru_fwd (recgen/ops/recurrent/gru.py) in the persistent mode: the same inputs and outputs. Returns
    None, having launched nothing, where lstm_fwd_persistent would."""
    from recgen.kernels.recurrent.gru_persistent import _gru_fwd_persistent_kernel

    T, B, _ = xw.shape
    D, G3, H = w_hh.shape
    y = new_output((T, B, D * H), xw.dtype, xw.device)
    saved = new_output((D, T, B, 4 * H), torch.float32, xw.device) if save else None
    h_state, h_carry = exchange_state(h0, w_hh.dtype)
    w_hh_c = w_hh.contiguous()
    args = dict(
        xw_ptr=xw, w_hh_ptr=w_hh_c, b_hh_ptr=w_hh_c if b_hh is None else b_hh.contiguous(),
        lengths_ptr=lengths_arg(lengths, xw), y_ptr=y, saved_ptr=saved if save else y, h_state_ptr=h_state,
        h_carry_ptr=h_carry, T=T, B=B, H=H,
        stride_xt=xw.stride(0), stride_xb=xw.stride(1), stride_yt=y.stride(0), stride_yb=y.stride(1),
        first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, HAS_BIAS=b_hh is not None,
        SAVE=bool(save), **dot_flags(w_hh.dtype, "rnn"),
    )
    if not run_persistent("gru_fwd_persistent", _gru_fwd_persistent_kernel, plans, (B, H, D), T, xw.device,
                          args):
        return None
    return y, h_carry, saved


def gru_bwd_persistent(dy, dhn, saved, h_prev, w_hh, lengths, first_reverse, plans: tuple):
    """gru_bwd (recgen/ops/recurrent/gru.py) in the persistent mode: the same inputs and outputs (dxw,
    dghn, dh0). Returns None, having launched nothing, where lstm_fwd_persistent would."""
    from recgen.kernels.recurrent.gru_persistent import _gru_bwd_persistent_kernel

    D, T, B, G4 = saved.shape
    H = G4 // 4
    dxw = new_output((D, T, B, 3 * H), torch.float32, saved.device)
    dghn = new_output((D, T, B, H), torch.float32, saved.device)
    dh_state = ping_pong_state(dhn)
    args = dict(
        dy_ptr=dy, saved_ptr=saved, h_prev_ptr=h_prev.contiguous(), w_hh_ptr=w_hh.contiguous(),
        lengths_ptr=lengths_arg(lengths, saved), dxw_ptr=dxw, dghn_ptr=dghn, dh_state_ptr=dh_state,
        T=T, B=B, H=H,
        first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, **dot_flags(w_hh.dtype, "rnn"),
    )
    if not run_persistent("gru_bwd_persistent", _gru_bwd_persistent_kernel, plans, (B, H, D), T, saved.device, args,
                          phases=True):
        return None
    return dxw, dghn, dh_state[:, T % 2]


def _gru_fwd_fake(xw, h0, w_hh, b_hh, lengths, first_reverse, save):
    T, B, _ = xw.shape
    D, _, H = w_hh.shape
    return (xw.new_empty((T, B, D * H)), xw.new_empty((D, B, H)),
            xw.new_empty((D, T, B, 4 * H), dtype=torch.float32) if save else missing_output(xw))


@register_op("gru_fwd", "(Tensor xw, Tensor h0, Tensor w_hh, Tensor? b_hh, Tensor? lengths, bool first_reverse, "
        "bool save) -> (Tensor, Tensor, Tensor)", _gru_fwd_fake)
def gru_fwd_op(xw: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], lengths: Optional[Tensor],
               first_reverse: bool, save: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """torch.ops.recgen.gru_fwd: gru_fwd with h_n in xw's dtype. Returns y, h_n, saved (empty
    with save=False); differentiable in xw, h0, w_hh, b_hh when save=True."""
    y, hn, saved = gru_fwd(xw, h0, w_hh, b_hh, lengths, first_reverse, save)
    return y, owned_copy(hn, xw.dtype), saved if save else missing_output(xw)


def _gru_bwd_fake(dy, dhn, saved, h_prev, w_hh, lengths, first_reverse):
    D, T, B, G4 = saved.shape
    H = G4 // 4
    return saved.new_empty((D, T, B, 3 * H)), saved.new_empty((D, T, B, H)), saved.new_empty((D, B, H))


@register_op("gru_bwd", "(Tensor dy, Tensor dhn, Tensor saved, Tensor h_prev, Tensor w_hh, Tensor? lengths, "
        "bool first_reverse) -> (Tensor, Tensor, Tensor)", _gru_bwd_fake)
def gru_bwd_op(dy: Tensor, dhn: Tensor, saved: Tensor, h_prev: Tensor, w_hh: Tensor, lengths: Optional[Tensor],
               first_reverse: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """torch.ops.recgen.gru_bwd: gru_bwd (dxw, dghn, dh0 float32)."""
    dxw, dghn, dh0 = gru_bwd(dy, dhn, saved, h_prev, w_hh, lengths, first_reverse)
    return dxw, dghn, owned_copy(dh0, torch.float32)


class GRUFunction(torch.autograd.Function):
    """The GRU recurrence of one layer's D directions, given the input projection xw: the
    autograd of torch.ops.recgen.gru_fwd (registered below).

    Inputs: xw (T, B, D*3H), h0 (D, B, H), w_hh (D, 3H, H), b_hh (D, 3H) or None, lengths (B,)
    or None, first_reverse (bool), save (bool: False only when nothing is differentiated).
    Outputs y (T, B, D*H), h_n (D, B, H) in xw's dtype and the saved float32 tensor (not
    differentiable).
    """

    @staticmethod
    def forward(xw, h0, w_hh, b_hh, lengths, first_reverse, save=True):
        return torch.ops.recgen.gru_fwd(xw, h0, w_hh, b_hh, lengths, first_reverse, save)

    @staticmethod
    def setup_context(ctx, inputs, output):
        xw, h0, w_hh, b_hh, lengths, first_reverse, save = inputs
        y, _, saved = output
        # xw and b_hh only for a backward with create_graph=True (recomputed_grads).
        ctx.save_for_backward(y, h0, w_hh, saved, lengths, xw, b_hh)
        ctx.first_reverse, ctx.save = first_reverse, save
        ctx.b_dtype = None if b_hh is None else b_hh.dtype
        ctx.mark_non_differentiable(saved)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, dy, dhn, _saved):
        y, h0, w_hh, saved, lengths, xw, b_hh = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            need = ctx.needs_input_grad
            dxw, dh0, _, dw_hh, db_hh, _ = recomputed_grads(
                "gru", (dy, dhn), (xw, h0, None, w_hh, b_hh, None), (need[0], need[1], False, need[2], need[3], False),
                lengths, ctx.first_reverse)
            return dxw, dh0, dw_hh, db_hh, None, None, None
        check_saved("gru_fwd", ctx.save)
        D, H = w_hh.shape[0], w_hh.shape[2]
        h_prev = h_prev_directions(y, h0, lengths, ctx.first_reverse)
        dxw, dghn, dh0 = torch.ops.recgen.gru_bwd(direction_major(zeros_if_none(dy, y), D),
                                                  zeros_if_none(dhn, h0), saved, h_prev, w_hh, lengths,
                                                  ctx.first_reverse)
        # Hidden-side pre-activation gradient, by gate: r and z equal xw's, n is dghn.
        d_rz = dxw[..., :2 * H]
        dw_hh = db_hh = None
        if ctx.needs_input_grad[2]:
            dw_hh = torch.cat([bmm_t(d_rz, h_prev), bmm_t(dghn, h_prev)], dim=1).to(w_hh.dtype)
        if ctx.b_dtype is not None and ctx.needs_input_grad[3]:
            db_hh = torch.cat([d_rz.sum(dim=(1, 2)), dghn.sum(dim=(1, 2))], dim=1).to(ctx.b_dtype)
        return directions_side_by_side(dxw).to(y.dtype), dh0.to(h0.dtype), dw_hh, db_hh, None, None, None


register_function("gru_fwd", GRUFunction)


def gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=None, first_reverse=False):
    """One GRU layer, all D directions in one launch each way. x: (T, B, I); h0: (D, B, H);
    w_ih, w_hh, b_ih, b_hh: lists of D per-direction tensors (biases None when absent).
    Returns y (T, B, D*H), h_n (D, B, H)."""
    xw = projected_inputs(x, w_ih, b_ih, b_hh, fold_hidden_bias=False)
    w_hh, b_hh = stacked(w_hh), stacked(b_hh)
    save = needs_saving(xw, h0, w_hh, b_hh)
    y, h_n, _ = torch.ops.recgen.gru_fwd(xw, h0, w_hh, b_hh, lengths, first_reverse, save)
    return y, h_n


def gru_direction(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False):
    """One GRU layer in one direction on the Triton path; same contract as
    recgen.reference.recurrent_direction('gru', ...) without its c_n (None there):
    returns y (T, B, H), h_n (B, H).

    >>> y, h_n = gru_direction(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=None, reverse=False)
    """
    y, h_n = gru_layer(x, h0.unsqueeze(0), [w_ih], [w_hh], [b_ih], [b_hh], lengths, reverse)
    return y, h_n[0]
