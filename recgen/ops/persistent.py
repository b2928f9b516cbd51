"""The launchers of the persistent multi-program mode (kernels/recurrent/lstm_persistent.py,
kernels/recurrent/gru_persistent.py, kernels/recurrent/rnn_persistent.py): the LSTM (without projection), GRU and
Elman RNN forwards and backwards, with the same inputs and outputs as the single-program
launchers they stand in for.

The mode is chosen in recgen/ops/config.py::recurrence_config; the tiles, the co-residency check,
the launch and the check of the grid barrier's timeout flag after it (RECGEN_CHECK_BARRIER=1 for
a host-side RuntimeError) are in recgen/ops/persistent_tiles.py.
"""

from __future__ import annotations

import torch

from recgen.ops._launch import dot_flags, new_output
from recgen.ops.persistent_tiles import run_persistent
from recgen.ops.recurrence import lengths_arg, ping_pong_state

STATE_POINTERS = ("h_state_ptr",)  # the forwards exchange h_t in the weights' dtype


def exchange_state(h0: torch.Tensor, dtype: torch.dtype) -> tuple:
    """A persistent forward's state: the (D, 2, B, H) ping-pong buffer through which programs
    exchange h_t, in the dtype of the next step's dot operand (the weights'), and the float32
    (D, B, H) copy of h each program keeps of its own columns (h0 in, h_n out)."""
    return ping_pong_state(h0, dtype), h0.to(torch.float32, copy=True).contiguous()


def lstm_fwd_persistent(xw, h0, c0, w_hh, lengths, first_reverse, save, plans: tuple):
    """lstm_fwd (recgen/ops/lstm.py) in the persistent mode, without projection: the same inputs
    and outputs. plans: the candidate tiles (persistent_tiles.persistent_plans). Returns None,
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
    """lstm_bwd (recgen/ops/lstm.py) in the persistent mode, without projection: the same inputs
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


def gru_fwd_persistent(xw, h0, w_hh, b_hh, lengths, first_reverse, save, plans: tuple):
    """gru_fwd (recgen/ops/gru.py) in the persistent mode: the same inputs and outputs. Returns
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
    """gru_bwd (recgen/ops/gru.py) in the persistent mode: the same inputs and outputs (dxw,
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


def rnn_fwd_persistent(xw, h0, w_hh, lengths, first_reverse, nonlinearity, save, plans: tuple):
    """rnn_fwd (recgen/ops/rnn.py) in the persistent mode: the same inputs and outputs. Returns
    None, having launched nothing, where lstm_fwd_persistent would."""
    from recgen.kernels.recurrent.rnn_persistent import _rnn_fwd_persistent_kernel
    from recgen.ops.rnn import _relu_flag

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
    """rnn_bwd (recgen/ops/rnn.py) in the persistent mode: the same inputs and outputs (dpre,
    dh0). Returns None, having launched nothing, where lstm_fwd_persistent would."""
    from recgen.kernels.recurrent.rnn_persistent import _rnn_bwd_persistent_kernel
    from recgen.ops.rnn import _relu_flag

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
