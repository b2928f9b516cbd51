"""Elman RNN recurrence (tanh or relu): launchers and the autograd Function.

Name chain: _rnn_fwd_kernel / _rnn_bwd_kernel -> rnn_fwd / rnn_bwd -> RNNFunction
-> rnn_direction (one layer, one direction) -> recgen.functional.rnn -> recgen.nn.RNN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recgen.ops._launch import dot_flags, launch, new_output
from recgen.ops.config import recurrence_config
from recgen.ops.recurrence import (
    grid_for, h_prev_sequence, lengths_arg, summed_bias, zeros_if_none,
)

NONLINEARITIES = ("tanh", "relu")


def _relu_flag(nonlinearity: str) -> bool:
    """The kernels' RELU constexpr; an unknown nonlinearity raises before anything is launched."""
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'; expected 'tanh' or 'relu'")
    return nonlinearity == "relu"


def rnn_fwd(xw, h0, w_hh, lengths, reverse, nonlinearity):
    """Run the RNN time loop in one launch.

    xw: (T, B, H) input projection with both biases; h0: (B, H); w_hh: (H, H);
    lengths: (B,) or None; nonlinearity: 'tanh' | 'relu'.
    Returns y (T, B, H) in xw's dtype, h_n (B, H) float32 and the saved activations
    act (T, B, H) float32 (equal to y, zero at padding).
    """
    relu = _relu_flag(nonlinearity)
    from recgen.kernels.rnn import _rnn_fwd_kernel

    T, B, H = xw.shape
    cfg = recurrence_config(1, H, H, w_hh.dtype)
    y = new_output((T, B, H), xw.dtype, xw.device)
    act = new_output((T, B, H), torch.float32, xw.device)
    h_state = torch.empty((2, B, H), device=xw.device, dtype=torch.float32)
    h_state[0].copy_(h0)
    launch(
        "rnn_fwd", _rnn_fwd_kernel, grid_for(B, cfg),
        xw_ptr=xw, w_hh_ptr=w_hh.contiguous(), lengths_ptr=lengths_arg(lengths, xw),
        y_ptr=y, act_ptr=act, h_state_ptr=h_state, T=T, B=B, H=H,
        stride_xt=xw.stride(0), stride_xb=xw.stride(1), stride_yt=y.stride(0), stride_yb=y.stride(1),
        REVERSE=reverse, HAS_LENGTHS=lengths is not None, RELU=relu, RESIDENT=cfg.resident,
        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_P=cfg.block_p, num_warps=cfg.num_warps,
        **dot_flags(w_hh.dtype),
    )
    return y, h_state[T % 2], act


def rnn_bwd(dy, dhn, act, w_hh, lengths, reverse, nonlinearity):
    """Back-propagation through time in one launch, in reverse step order.

    dy: (T, B, H); dhn: (B, H); act: the forward's saved float32 activations.
    Returns dpre (T, B, H) float32 (gradient of the pre-activation, i.e. of xw; zero at padding)
    and dh0 (B, H) float32.
    """
    relu = _relu_flag(nonlinearity)
    from recgen.kernels.rnn import _rnn_bwd_kernel

    T, B, H = act.shape
    cfg = recurrence_config(1, H, H, w_hh.dtype)
    dpre = new_output((T, B, H), torch.float32, act.device)
    dh_state = torch.empty((2, B, H), device=act.device, dtype=torch.float32)
    dh_state[0].copy_(dhn)
    launch(
        "rnn_bwd", _rnn_bwd_kernel, grid_for(B, cfg),
        dy_ptr=dy.contiguous(), act_ptr=act, w_hh_ptr=w_hh.contiguous(),
        lengths_ptr=lengths_arg(lengths, act), dpre_ptr=dpre, dh_state_ptr=dh_state, T=T, B=B, H=H,
        REVERSE=reverse, HAS_LENGTHS=lengths is not None, RELU=relu, RESIDENT=cfg.resident,
        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_P=cfg.block_p, num_warps=cfg.num_warps,
        **dot_flags(w_hh.dtype),
    )
    return dpre, dh_state[T % 2]


class RNNFunction(torch.autograd.Function):
    """The Elman recurrence of one layer and direction, given the input projection xw.

    Inputs: xw (T, B, H), h0 (B, H), w_hh (H, H), lengths (B,) or None, reverse (bool),
    nonlinearity ('tanh' | 'relu'). Outputs y (T, B, H), h_n (B, H) in xw's dtype.

    >>> y, h_n = RNNFunction.apply(xw, h0, w_hh, None, False, 'tanh')
    """

    @staticmethod
    def forward(ctx, xw, h0, w_hh, lengths, reverse, nonlinearity):
        y, hn, act = rnn_fwd(xw, h0, w_hh, lengths, reverse, nonlinearity)
        ctx.save_for_backward(y, h0, w_hh, act)
        ctx.lengths, ctx.reverse, ctx.nonlinearity = lengths, reverse, nonlinearity
        return y, hn.to(xw.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dhn):
        y, h0, w_hh, act = ctx.saved_tensors
        dy = zeros_if_none(dy, y)
        dhn = zeros_if_none(dhn, h0)
        dpre, dh0 = rnn_bwd(dy, dhn, act, w_hh, ctx.lengths, ctx.reverse, ctx.nonlinearity)
        T, B, H = dpre.shape
        dxw = dpre.to(y.dtype) if ctx.needs_input_grad[0] else None
        dh0 = dh0.to(h0.dtype) if ctx.needs_input_grad[1] else None
        dw_hh = None
        if ctx.needs_input_grad[2]:
            # The float32 activations rather than y: the exact states the forward read.
            h_prev = h_prev_sequence(act, h0, ctx.lengths, ctx.reverse).reshape(T * B, H)
            dw_hh = (dpre.view(T * B, H).t() @ h_prev).to(w_hh.dtype)
        return dxw, dh0, dw_hh, None, None, None


def rnn_direction(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False,
                  nonlinearity="tanh"):
    """One Elman RNN layer in one direction on the Triton path; same contract as
    recgen.reference.recurrent_direction('rnn_tanh' | 'rnn_relu', ...) without the c_n.

    x: (T, B, I); h0: (B, H); w_ih: (H, I); w_hh: (H, H); b_ih, b_hh: (H,) or None;
    lengths: (B,) valid steps per batch column or None. Returns y (T, B, H), h_n (B, H).

    >>> y, h_n = rnn_direction(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity='relu')
    """
    _relu_flag(nonlinearity)
    xw = F.linear(x, w_ih, summed_bias(b_ih, b_hh))
    return RNNFunction.apply(xw, h0, w_hh, lengths, reverse, nonlinearity)
