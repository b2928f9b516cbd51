"""GRU recurrence: launchers and the autograd Function.

Name chain: _gru_fwd_kernel / _gru_bwd_kernel -> gru_fwd / gru_bwd -> GRUFunction
-> gru_direction (one layer, one direction) -> recgen.functional.gru -> recgen.nn.GRU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recgen.ops._launch import dot_flags, launch, new_output
from recgen.ops.config import recurrence_config
from recgen.ops.recurrence import grid_for, h_prev_sequence, lengths_arg, zeros_if_none


def gru_fwd(xw, h0, w_hh, b_hh, lengths, reverse):
    """Run the GRU time loop in one launch.

    xw: (T, B, 3H) input projection x W_ih^T + b_ih; h0: (B, H); w_hh: (3H, H); b_hh: (3H,)
    or None (it is added inside the kernel, since b_hn sits inside r * (...)); lengths: (B,)
    int32 on the device or None. Returns y (T, B, H) in xw's dtype, h_n (B, H) float32 and
    the saved tensor (T, B, 4H) float32 holding r, z, n and gh_n = h W_hn^T + b_hn per step.
    """
    from recgen.kernels.gru import _gru_fwd_kernel

    T, B, G3 = xw.shape
    H = G3 // 3
    cfg = recurrence_config(3, H, H, w_hh.dtype)
    y = new_output((T, B, H), xw.dtype, xw.device)
    saved = new_output((T, B, 4 * H), torch.float32, xw.device)
    h_state = torch.empty((2, B, H), device=xw.device, dtype=torch.float32)
    h_state[0].copy_(h0)
    w_hh_c = w_hh.contiguous()
    launch(
        "gru_fwd", _gru_fwd_kernel, grid_for(B, cfg),
        xw_ptr=xw, w_hh_ptr=w_hh_c, b_hh_ptr=w_hh_c if b_hh is None else b_hh.contiguous(),
        lengths_ptr=lengths_arg(lengths, xw), y_ptr=y, saved_ptr=saved, h_state_ptr=h_state,
        T=T, B=B, H=H,
        stride_xt=xw.stride(0), stride_xb=xw.stride(1), stride_yt=y.stride(0), stride_yb=y.stride(1),
        REVERSE=reverse, HAS_LENGTHS=lengths is not None, HAS_BIAS=b_hh is not None,
        RESIDENT=cfg.resident, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_P=cfg.block_p,
        num_warps=cfg.num_warps, **dot_flags(w_hh.dtype),
    )
    return y, h_state[T % 2], saved


def gru_bwd(dy, dhn, saved, h_prev, w_hh, lengths, reverse):
    """Back-propagation through time in one launch, in reverse step order.

    dy: (T, B, H); dhn: (B, H); saved: the forward's (T, B, 4H) float32 tensor; h_prev: (T, B, H)
    from h_prev_sequence. Returns dxw (T, B, 3H) float32 (gradient of xw), dghn (T, B, H)
    float32 (gradient of gh_n; the hidden-side pre-activation gradient is (dxw_r, dxw_z, dghn))
    and dh0 (B, H) float32.
    """
    from recgen.kernels.gru import _gru_bwd_kernel

    T, B, G4 = saved.shape
    H = G4 // 4
    cfg = recurrence_config(3, H, H, w_hh.dtype)
    dxw = new_output((T, B, 3 * H), torch.float32, saved.device)
    dghn = new_output((T, B, H), torch.float32, saved.device)
    dh_state = torch.empty((2, B, H), device=saved.device, dtype=torch.float32)
    dh_state[0].copy_(dhn)
    launch(
        "gru_bwd", _gru_bwd_kernel, grid_for(B, cfg),
        dy_ptr=dy.contiguous(), saved_ptr=saved, h_prev_ptr=h_prev.contiguous(),
        w_hh_ptr=w_hh.contiguous(), lengths_ptr=lengths_arg(lengths, saved),
        dxw_ptr=dxw, dghn_ptr=dghn, dh_state_ptr=dh_state, T=T, B=B, H=H,
        REVERSE=reverse, HAS_LENGTHS=lengths is not None, RESIDENT=cfg.resident,
        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_P=cfg.block_p, num_warps=cfg.num_warps,
        **dot_flags(w_hh.dtype),
    )
    return dxw, dghn, dh_state[T % 2]


class GRUFunction(torch.autograd.Function):
    """The GRU recurrence of one layer and direction, given the input projection xw.

    Inputs: xw (T, B, 3H), h0 (B, H), w_hh (3H, H), b_hh (3H,) or None, lengths (B,) or None,
    reverse (bool). Outputs y (T, B, H), h_n (B, H) in xw's dtype.
    """

    @staticmethod
    def forward(ctx, xw, h0, w_hh, b_hh, lengths, reverse):
        y, hn, saved = gru_fwd(xw, h0, w_hh, b_hh, lengths, reverse)
        ctx.save_for_backward(y, h0, w_hh, saved)
        ctx.lengths, ctx.reverse = lengths, reverse
        ctx.b_dtype = None if b_hh is None else b_hh.dtype
        return y, hn.to(xw.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dhn):
        y, h0, w_hh, saved = ctx.saved_tensors
        dy = zeros_if_none(dy, y)
        dhn = zeros_if_none(dhn, h0)
        T, B, H = y.shape
        h_prev = h_prev_sequence(y, h0, ctx.lengths, ctx.reverse)
        dxw, dghn, dh0 = gru_bwd(dy, dhn, saved, h_prev, w_hh, ctx.lengths, ctx.reverse)
        # Hidden-side pre-activation gradient, by gate: r and z equal xw's, n is dghn.
        flat_rz = dxw.view(T * B, 3 * H)[:, :2 * H]
        flat_n = dghn.view(T * B, H)
        dw_hh = db_hh = None
        if ctx.needs_input_grad[2]:
            hp = h_prev.reshape(T * B, H).to(torch.float32)
            dw_hh = torch.cat([flat_rz.t() @ hp, flat_n.t() @ hp]).to(w_hh.dtype)
        if ctx.b_dtype is not None and ctx.needs_input_grad[3]:
            db_hh = torch.cat([flat_rz.sum(0), flat_n.sum(0)]).to(ctx.b_dtype)
        return dxw.to(y.dtype), dh0.to(h0.dtype), dw_hh, db_hh, None, None


def gru_direction(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False):
    """One GRU layer in one direction on the Triton path; same contract as
    recgen.reference.recurrent_direction('gru', ...) without its c_n (None there):
    returns y (T, B, H), h_n (B, H).

    >>> y, h_n = gru_direction(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=None, reverse=False)
    """
    xw = F.linear(x, w_ih, b_ih)
    return GRUFunction.apply(xw, h0, w_hh, b_hh, lengths, reverse)
