"""The LSTM recurrence: launchers, torch.library ops and the autograd Function.

Name chain, as called: _lstm_fwd_kernel (kernels/recurrent/lstm.py) -> lstm_fwd ->
torch.ops.recgen.lstm_fwd (lstm_fwd_op; its autograd: LSTMFunction) -> lstm_layer (one layer, all
its directions in one launch) -> recgen.functional.lstm -> recgen.nn.LSTM; the cell modules reach
lstm_layer through lstm_direction. Backward: LSTMFunction.backward -> torch.ops.recgen.lstm_bwd ->
lstm_bwd -> _lstm_bwd_kernel. In the persistent mode (modes.py) lstm_fwd and lstm_bwd call
lstm_fwd_persistent / lstm_bwd_persistent (below) (without projection), which run
_lstm_fwd_persistent_kernel / _lstm_bwd_persistent_kernel (kernels/recurrent/lstm_persistent.py) or
decline, and then the single-program kernel runs.

Tensors of a layer's D directions are stacked on a leading axis (D = 2 for bidirectional):
h0 (D, B, P), c0 (D, B, H), w_hh (D, 4H, P), w_hr (D, P, H); xw (T, B, D*4H) and y (T, B, D*P)
hold the directions side by side, as torch.nn lays out a bidirectional output.

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


def lstm_fwd(xw, h0, c0, w_hh, w_hr, lengths, first_reverse, save=True):
    """Run the LSTM time loop of D directions in one launch (one program per batch tile and
    direction; direction d > 0 runs reversed, direction 0 too when first_reverse).

    xw: (T, B, D*4H) input projection with both biases; h0: (D, B, P); c0: (D, B, H);
    w_hh: (D, 4H, P); w_hr: (D, P, H) or None; lengths: (B,) or None.
    Returns y (T, B, D*P) in xw's dtype, h_n (D, B, P) and c_n (D, B, H) float32, and the saved
    float32 tensors gates (D, T, B, 4H), c (D, T, B, H), m (D, T, B, H) or None. With save=False
    (nothing will be differentiated) gates and c are None and never written.
    """
    from recgen.kernels.recurrent.lstm import _lstm_fwd_kernel

    T, B, _ = xw.shape
    D, G4, P = w_hh.shape
    H = G4 // 4
    has_proj = w_hr is not None
    cfg = recurrence_config(4, H, P, w_hh.dtype, has_proj, batch=B, persistent_capable=not has_proj)

    def prepare():
        y = new_output((T, B, D * P), xw.dtype, xw.device)
        gates = new_output((D, T, B, 4 * H), torch.float32, xw.device) if save else None
        c_all = new_output((D, T, B, H), torch.float32, xw.device) if save else None
        m_all = new_output((D, T, B, H), torch.float32, xw.device) if has_proj else None
        return dict(
            xw_ptr=xw, w_hh_ptr=w_hh.contiguous(), w_hr_ptr=w_hr.contiguous() if has_proj else w_hh,
            lengths_ptr=lengths_arg(lengths, xw), y_ptr=y,
            gates_ptr=gates if save else y, c_ptr=c_all if save else y,  # y: never written stand-ins
            m_ptr=m_all if has_proj else y, h_state_ptr=ping_pong_state(h0),
            c_state_ptr=c0.to(torch.float32, copy=True).contiguous(),
            T=T, B=B, H=H, P=P,
            stride_xt=xw.stride(0), stride_xb=xw.stride(1), stride_yt=y.stride(0), stride_yb=y.stride(1),
            first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, HAS_PROJ=has_proj,
            SAVE=bool(save), **dot_flags(w_hh.dtype, "rnn"))

    args = prepare()
    tiles, try_persistent = choose_mode("lstm_fwd", _lstm_fwd_kernel, cfg, args)
    if try_persistent:
        args = None  # released before the persistent launcher allocates its own outputs
        out = lstm_fwd_persistent(xw, h0, c0, w_hh, lengths, first_reverse, save, cfg.persistent)
        if out is not None:
            return out
        args = prepare()
    launch("lstm_fwd", _lstm_fwd_kernel, layer_grid(B, D), **args, **tiles.args())
    y, written = args["y_ptr"], lambda key, present: args[key] if present else None
    return (y, args["h_state_ptr"][:, T % 2], args["c_state_ptr"], written("gates_ptr", save),
            written("c_ptr", save), written("m_ptr", has_proj))


def lstm_bwd(dy, dhn, dcn, gates, c_all, c0, w_hh, w_hr, lengths, first_reverse):
    """Back-propagation through time of D directions in one launch, in reverse step order.

    dy: (D, T, B, P) contiguous; dhn: (D, B, P); dcn: (D, B, H); gates, c_all: the forward's
    saved tensors. Returns dgates (D, T, B, 4H) float32 (gradient of the gate pre-activations,
    i.e. of xw), dh0 (D, B, P), dc0 (D, B, H) float32, and dh_all (D, T, B, P) float32 (total
    gradient of each h_t) when projecting, else None.
    """
    from recgen.kernels.recurrent.lstm import _lstm_bwd_kernel

    D, T, B, G4 = gates.shape
    H = G4 // 4
    P = w_hh.shape[2]
    has_proj = w_hr is not None
    cfg = recurrence_config(4, H, P, w_hh.dtype, has_proj, batch=B, persistent_capable=not has_proj)

    def prepare():
        dgates = new_output((D, T, B, 4 * H), torch.float32, gates.device)
        dh_all = new_output((D, T, B, P), torch.float32, gates.device) if has_proj else None
        return dict(
            dy_ptr=dy, gates_ptr=gates, c_ptr=c_all, c0_ptr=c0.to(torch.float32).contiguous(),
            w_hh_ptr=w_hh.contiguous(), w_hr_ptr=w_hr.contiguous() if has_proj else w_hh,
            lengths_ptr=lengths_arg(lengths, gates), dgates_ptr=dgates,
            dh_ptr=dh_all if has_proj else dgates, dh_state_ptr=ping_pong_state(dhn),
            dc_state_ptr=dcn.to(torch.float32, copy=True).contiguous(),
            T=T, B=B, H=H, P=P, first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None,
            HAS_PROJ=has_proj, **dot_flags(w_hh.dtype, "rnn"))

    args = prepare()
    tiles, try_persistent = choose_mode("lstm_bwd", _lstm_bwd_kernel, cfg, args)
    if try_persistent:
        args = None  # released before the persistent launcher allocates its own outputs
        out = lstm_bwd_persistent(dy, dhn, dcn, gates, c_all, c0, w_hh, lengths, first_reverse, cfg.persistent)
        if out is not None:
            return out
        args = prepare()
    launch("lstm_bwd", _lstm_bwd_kernel, layer_grid(B, D), **args, **tiles.args())
    return (args["dgates_ptr"], args["dh_state_ptr"][:, T % 2], args["dc_state_ptr"],
            args["dh_ptr"] if has_proj else None)


# ---- the persistent mode (recgen/ops/recurrent/persistent.py): the same inputs and outputs ----


def lstm_fwd_persistent(xw, h0, c0, w_hh, lengths, first_reverse, save, plans: tuple):
    """lstm_fwd (recgen/ops/recurrent/lstm.py) in the persistent mode, without projection: the same inputs
    and outputs. plans: the candidate tiles (recgen.ops.common.tiling.persistent_plans). Returns None,
    having launched nothing, when none of them fits the device at once, or while torch.compile
    traces with fake tensors (no compiled kernel to measure): the caller then runs the streamed
    kernel."""
    from recgen.kernels.recurrent.lstm_persistent import _lstm_fwd_persistent_kernel

    T, B, _ = xw.shape
    D, G4, H = w_hh.shape
    y = new_output((T, B, D * H), xw.dtype, xw.device)
    gates = new_output((D, T, B, 4 * H), torch.float32, xw.device) if save else None
    c_all = new_output((D, T, B, H), torch.float32, xw.device) if save else None
    h_state, h_carry = exchange_state(h0, w_hh.dtype)
    c_state = c0.to(torch.float32, copy=True).contiguous()
    args = dict(
        xw_ptr=xw, w_hh_ptr=w_hh.contiguous(), lengths_ptr=lengths_arg(lengths, xw), y_ptr=y,
        gates_ptr=gates if save else y, c_ptr=c_all if save else y, h_state_ptr=h_state,
        h_carry_ptr=h_carry, c_state_ptr=c_state, T=T, B=B, H=H,
        stride_xt=xw.stride(0), stride_xb=xw.stride(1), stride_yt=y.stride(0), stride_yb=y.stride(1),
        first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, SAVE=bool(save),
        **dot_flags(w_hh.dtype, "rnn"),
    )
    # Under the interpreter (one program at a time, so no barrier could complete) run_persistent
    # runs one launch per step: launches are ordered, so each step sees the previous step's h.
    if not run_persistent("lstm_fwd_persistent", _lstm_fwd_persistent_kernel, plans, (B, H, D), T, xw.device,
                          args):
        return None
    return y, h_carry, c_state, gates, c_all, None


def lstm_bwd_persistent(dy, dhn, dcn, gates, c_all, c0, w_hh, lengths, first_reverse, plans: tuple):
    """lstm_bwd (recgen/ops/recurrent/lstm.py) in the persistent mode, without projection: the same inputs
    and outputs. Returns None, having launched nothing, where lstm_fwd_persistent would."""
    from recgen.kernels.recurrent.lstm_persistent import _lstm_bwd_persistent_kernel

    D, T, B, G4 = gates.shape
    H = G4 // 4
    dgates = new_output((D, T, B, 4 * H), torch.float32, gates.device)
    dh_state = ping_pong_state(dhn)
    dc_state = dcn.to(torch.float32, copy=True).contiguous()
    args = dict(
        dy_ptr=dy, gates_ptr=gates, c_ptr=c_all, c0_ptr=c0.to(torch.float32).contiguous(),
        w_hh_ptr=w_hh.contiguous(), lengths_ptr=lengths_arg(lengths, gates), dgates_ptr=dgates,
        dh_state_ptr=dh_state, dc_state_ptr=dc_state, T=T, B=B, H=H,
        first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, **dot_flags(w_hh.dtype, "rnn"),
    )
    if not run_persistent("lstm_bwd_persistent", _lstm_bwd_persistent_kernel, plans, (B, H, D), T, gates.device, args,
                          phases=True):
        return None
    return dgates, dh_state[:, T % 2], dc_state, None


def _lstm_fwd_fake(xw, h0, c0, w_hh, w_hr, lengths, first_reverse, save):
    T, B, _ = xw.shape
    D, G4, P = w_hh.shape
    H = G4 // 4
    saved = dict(dtype=torch.float32)
    return (xw.new_empty((T, B, D * P)), xw.new_empty((D, B, P)), xw.new_empty((D, B, H)),
            xw.new_empty((D, T, B, 4 * H), **saved) if save else missing_output(xw),
            xw.new_empty((D, T, B, H), **saved) if save else missing_output(xw),
            xw.new_empty((D, T, B, H), **saved) if w_hr is not None else missing_output(xw))


@register_op("lstm_fwd", "(Tensor xw, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, Tensor? lengths, "
        "bool first_reverse, bool save) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", _lstm_fwd_fake)
def lstm_fwd_op(xw: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
                lengths: Optional[Tensor], first_reverse: bool, save: bool
                ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """torch.ops.recgen.lstm_fwd: lstm_fwd with h_n, c_n in xw's dtype and empty tensors for the
    saved ones that do not exist (m when not projecting; all when save=False). Returns y, h_n,
    c_n, gates, c, m; differentiable in xw, h0, c0, w_hh, w_hr when save=True."""
    y, hn, cn, gates, c_all, m_all = lstm_fwd(xw, h0, c0, w_hh, w_hr, lengths, first_reverse, save)
    placeholder = missing_output(xw)
    return (y, owned_copy(hn, xw.dtype), owned_copy(cn, xw.dtype), gates if save else placeholder,
            c_all if save else placeholder.clone(), m_all if m_all is not None else placeholder.clone())


def _lstm_bwd_fake(dy, dhn, dcn, gates, c_all, c0, w_hh, w_hr, lengths, first_reverse):
    D, T, B, G4 = gates.shape  # gates is float32, so are these
    P = w_hh.shape[2]
    return (gates.new_empty(gates.shape), gates.new_empty((D, B, P)), gates.new_empty((D, B, G4 // 4)),
            gates.new_empty((D, T, B, P)) if w_hr is not None else missing_output(gates))


@register_op("lstm_bwd", "(Tensor dy, Tensor dhn, Tensor dcn, Tensor gates, Tensor c_all, Tensor c0, "
        "Tensor w_hh, Tensor? w_hr, Tensor? lengths, bool first_reverse) -> (Tensor, Tensor, Tensor, Tensor)",
        _lstm_bwd_fake)
def lstm_bwd_op(dy: Tensor, dhn: Tensor, dcn: Tensor, gates: Tensor, c_all: Tensor, c0: Tensor, w_hh: Tensor,
                w_hr: Optional[Tensor], lengths: Optional[Tensor], first_reverse: bool
                ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """torch.ops.recgen.lstm_bwd: lstm_bwd with an empty dh_all when not projecting."""
    dgates, dh0, dc0, dh_all = lstm_bwd(dy, dhn, dcn, gates, c_all, c0, w_hh, w_hr, lengths, first_reverse)
    return (dgates, owned_copy(dh0, torch.float32), owned_copy(dc0, torch.float32),
            dh_all if dh_all is not None else missing_output(gates))


class LSTMFunction(torch.autograd.Function):
    """The LSTM recurrence of one layer's D directions, given the input projection xw: the
    autograd of torch.ops.recgen.lstm_fwd (registered below, so eager, `LSTMFunction.apply` and
    compiled graphs share this backward).

    Inputs: xw (T, B, D*4H), h0 (D, B, P), c0 (D, B, H), w_hh (D, 4H, P), w_hr (D, P, H) or
    None, lengths (B,) or None, first_reverse (bool), save (bool: False only when nothing is
    differentiated). Outputs y (T, B, D*P), h_n (D, B, P), c_n (D, B, H) in xw's dtype, then the
    saved float32 tensors (not differentiable).
    """

    @staticmethod
    def forward(xw, h0, c0, w_hh, w_hr, lengths, first_reverse, save=True):
        return torch.ops.recgen.lstm_fwd(xw, h0, c0, w_hh, w_hr, lengths, first_reverse, save)

    @staticmethod
    def setup_context(ctx, inputs, output):
        xw, h0, c0, w_hh, w_hr, lengths, first_reverse, save = inputs
        y, _, _, gates, c_all, m_all = output
        # xw only for a backward with create_graph=True (recomputed_grads): the kernels' backward
        # reads the saved gates instead.
        ctx.save_for_backward(y, h0, c0, w_hh, w_hr, gates, c_all, m_all, lengths, xw)
        ctx.first_reverse, ctx.save = first_reverse, save
        ctx.mark_non_differentiable(gates, c_all, m_all)
        ctx.set_materialize_grads(False)  # no zero tensors for the outputs nobody used

    @staticmethod
    def backward(ctx, dy, dhn, dcn, *_saved):
        y, h0, c0, w_hh, w_hr, gates, c_all, m_all, lengths, xw = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            need = ctx.needs_input_grad
            dxw, dh0, dc0, dw_hh, _, dw_hr = recomputed_grads(
                "lstm", (dy, dhn, dcn), (xw, h0, c0, w_hh, None, w_hr), (*need[:4], False, need[4]), lengths,
                ctx.first_reverse)
            return dxw, dh0, dc0, dw_hh, dw_hr, None, None, None
        check_saved("lstm_fwd", ctx.save)
        D = w_hh.shape[0]
        dy = direction_major(zeros_if_none(dy, y), D)
        dgates, dh0, dc0, dh_all = torch.ops.recgen.lstm_bwd(
            dy, zeros_if_none(dhn, h0), zeros_if_none(dcn, c0), gates, c_all, c0, w_hh, w_hr, lengths,
            ctx.first_reverse)
        dw_hh = dw_hr = None
        if ctx.needs_input_grad[3]:
            h_prev = h_prev_directions(y, h0, lengths, ctx.first_reverse)
            dw_hh = bmm_t(dgates, h_prev).to(w_hh.dtype)
        if w_hr is not None and ctx.needs_input_grad[4]:
            dw_hr = bmm_t(dh_all, m_all).to(w_hr.dtype)
        return (directions_side_by_side(dgates).to(y.dtype), dh0.to(h0.dtype), dc0.to(c0.dtype), dw_hh, dw_hr,
                None, None, None)


register_function("lstm_fwd", LSTMFunction)


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths=None, first_reverse=False):
    """One LSTM layer, all D directions in one launch each way. x: (T, B, I); h0: (D, B, P);
    c0: (D, B, H); w_ih, w_hh, b_ih, b_hh, w_hr: lists of D per-direction tensors (entries None
    when absent). Returns y (T, B, D*P), h_n (D, B, P), c_n (D, B, H)."""
    xw = projected_inputs(x, w_ih, b_ih, b_hh, fold_hidden_bias=True)
    w_hh, w_hr = stacked(w_hh), stacked(w_hr)
    save = needs_saving(xw, h0, c0, w_hh, w_hr)
    y, h_n, c_n = torch.ops.recgen.lstm_fwd(xw, h0, c0, w_hh, w_hr, lengths, first_reverse, save)[:3]
    return y, h_n, c_n


def lstm_direction(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, lengths=None,
                   reverse=False):
    """One LSTM layer in one direction on the Triton path; same contract as
    recgen.reference.recurrent_direction('lstm', ...): returns y (T, B, P), h_n, c_n."""
    y, h_n, c_n = lstm_layer(x, h0.unsqueeze(0), c0.unsqueeze(0), [w_ih], [w_hh], [b_ih], [b_hh],
                             [w_hr], lengths, reverse)
    return y, h_n[0], c_n[0]
