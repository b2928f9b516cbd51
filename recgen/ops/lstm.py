"""LSTM recurrence: launchers and the autograd Function.

Name chain: _lstm_fwd_kernel / _lstm_bwd_kernel -> lstm_fwd / lstm_bwd -> LSTMFunction
-> lstm_direction (one layer, one direction) -> recgen.functional.lstm -> recgen.nn.LSTM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recgen.ops._launch import dot_flags, launch, new_output
from recgen.ops.config import recurrence_config
from recgen.ops.recurrence import (
    grid_for, h_prev_sequence, lengths_arg, summed_bias, zeros_if_none,
)


def lstm_fwd(xw, h0, c0, w_hh, w_hr, lengths, reverse):
    """Run the LSTM time loop in one launch.

    xw: (T, B, 4H) input projection with both biases; h0: (B, P); c0: (B, H); w_hh: (4H, P);
    w_hr: (P, H) or None; lengths: (B,) int32 on the device or None.
    Returns y (T, B, P) in xw's dtype, h_n (B, P) and c_n (B, H) float32, and the saved
    tensors gates (T, B, 4H), c (T, B, H), m (T, B, H) or None, all float32.
    """
    from recgen.kernels.lstm import _lstm_fwd_kernel

    T, B, G4 = xw.shape
    H = G4 // 4
    P = w_hh.shape[1]
    has_proj = w_hr is not None
    cfg = recurrence_config(4, H, P, w_hh.dtype, has_proj)
    f32 = dict(device=xw.device, dtype=torch.float32)
    y = new_output((T, B, P), xw.dtype, xw.device)
    gates = new_output((T, B, 4 * H), torch.float32, xw.device)
    c_all = new_output((T, B, H), torch.float32, xw.device)
    m_all = new_output((T, B, H), torch.float32, xw.device) if has_proj else None
    h_state = torch.empty((2, B, P), **f32)
    h_state[0].copy_(h0)
    c_state = c0.to(torch.float32, copy=True).contiguous()
    w_hr_c = w_hr.contiguous() if has_proj else w_hh
    launch(
        "lstm_fwd", _lstm_fwd_kernel, grid_for(B, cfg),
        xw_ptr=xw, w_hh_ptr=w_hh.contiguous(), w_hr_ptr=w_hr_c,
        lengths_ptr=lengths_arg(lengths, xw), y_ptr=y, gates_ptr=gates, c_ptr=c_all,
        m_ptr=m_all if has_proj else c_all, h_state_ptr=h_state, c_state_ptr=c_state,
        T=T, B=B, H=H, P=P,
        stride_xt=xw.stride(0), stride_xb=xw.stride(1), stride_yt=y.stride(0), stride_yb=y.stride(1),
        REVERSE=reverse, HAS_LENGTHS=lengths is not None, HAS_PROJ=has_proj, RESIDENT=cfg.resident,
        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_P=cfg.block_p, num_warps=cfg.num_warps,
        **dot_flags(w_hh.dtype),
    )
    return y, h_state[T % 2], c_state, gates, c_all, m_all


def lstm_bwd(dy, dhn, dcn, gates, c_all, c0, w_hh, w_hr, lengths, reverse):
    """Back-propagation through time in one launch, in reverse step order.

    dy: (T, B, P); dhn: (B, P); dcn: (B, H); gates, c_all: the forward's saved float32 tensors.
    Returns dgates (T, B, 4H) float32 (gradient of the gate pre-activations, i.e. of xw),
    dh0 (B, P), dc0 (B, H) float32, and dh_all (T, B, P) float32 (total gradient of each h_t)
    when projecting, else None.
    """
    from recgen.kernels.lstm import _lstm_bwd_kernel

    T, B, G4 = gates.shape
    H = G4 // 4
    P = w_hh.shape[1]
    has_proj = w_hr is not None
    cfg = recurrence_config(4, H, P, w_hh.dtype, has_proj)
    f32 = dict(device=gates.device, dtype=torch.float32)
    dgates = new_output((T, B, 4 * H), torch.float32, gates.device)
    dh_all = new_output((T, B, P), torch.float32, gates.device) if has_proj else None
    dh_state = torch.empty((2, B, P), **f32)
    dh_state[0].copy_(dhn)
    dc_state = dcn.to(torch.float32, copy=True).contiguous()
    launch(
        "lstm_bwd", _lstm_bwd_kernel, grid_for(B, cfg),
        dy_ptr=dy.contiguous(), gates_ptr=gates, c_ptr=c_all,
        c0_ptr=c0.to(torch.float32).contiguous(), w_hh_ptr=w_hh.contiguous(),
        w_hr_ptr=w_hr.contiguous() if has_proj else w_hh, lengths_ptr=lengths_arg(lengths, gates),
        dgates_ptr=dgates, dh_ptr=dh_all if has_proj else dgates, dh_state_ptr=dh_state,
        dc_state_ptr=dc_state, T=T, B=B, H=H, P=P,
        REVERSE=reverse, HAS_LENGTHS=lengths is not None, HAS_PROJ=has_proj, RESIDENT=cfg.resident,
        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_P=cfg.block_p, num_warps=cfg.num_warps,
        **dot_flags(w_hh.dtype),
    )
    return dgates, dh_state[T % 2], dc_state, dh_all


class LSTMFunction(torch.autograd.Function):
    """The LSTM recurrence of one layer and direction, given the input projection xw.

    Inputs: xw (T, B, 4H), h0 (B, P), c0 (B, H), w_hh (4H, P), w_hr (P, H) or None,
    lengths (B,) or None, reverse (bool). Outputs y (T, B, P), h_n (B, P), c_n (B, H) in xw's dtype.
    """

    @staticmethod
    def forward(ctx, xw, h0, c0, w_hh, w_hr, lengths, reverse):
        y, hn, cn, gates, c_all, m_all = lstm_fwd(xw, h0, c0, w_hh, w_hr, lengths, reverse)
        ctx.save_for_backward(y, h0, c0, w_hh, w_hr, gates, c_all, m_all)
        ctx.lengths, ctx.reverse = lengths, reverse
        return y, hn.to(xw.dtype), cn.to(xw.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dhn, dcn):
        y, h0, c0, w_hh, w_hr, gates, c_all, m_all = ctx.saved_tensors
        dy = zeros_if_none(dy, y)
        dhn = zeros_if_none(dhn, h0)
        dcn = zeros_if_none(dcn, c0)
        dgates, dh0, dc0, dh_all = lstm_bwd(dy, dhn, dcn, gates, c_all, c0, w_hh, w_hr,
                                            ctx.lengths, ctx.reverse)
        T, B, G4 = dgates.shape
        flat_dg = dgates.view(T * B, G4)
        dw_hh = dw_hr = None
        if ctx.needs_input_grad[3]:
            h_prev = h_prev_sequence(y, h0, ctx.lengths, ctx.reverse).reshape(T * B, w_hh.shape[1])
            dw_hh = (flat_dg.t() @ h_prev.to(torch.float32)).to(w_hh.dtype)
        if w_hr is not None and ctx.needs_input_grad[4]:
            dw_hr = (dh_all.view(T * B, w_hr.shape[0]).t() @ m_all.view(T * B, w_hr.shape[1])).to(w_hr.dtype)
        return (dgates.to(y.dtype), dh0.to(h0.dtype), dc0.to(c0.dtype), dw_hh, dw_hr, None, None)


def lstm_direction(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, lengths=None,
                   reverse=False):
    """One LSTM layer in one direction on the Triton path; same contract as
    recgen.reference.recurrent_direction('lstm', ...): returns y (T, B, P), h_n, c_n."""
    xw = F.linear(x, w_ih, summed_bias(b_ih, b_hh))
    return LSTMFunction.apply(xw, h0, c0, w_hh, w_hr, lengths, reverse)
