"""GRU recurrence kernels: one launch runs the whole time loop of one layer and direction.

Glossary: T steps, B batch, D directions (one program per batch tile and direction), H hidden (the recurrent width P equals H: a GRU does not project),
G = 3 gates in torch's order (r, z, n). One program owns BLOCK_B batch rows for all T steps.
BLOCK_H tiles the gate columns a step produces, BLOCK_P the columns of h_{t-1} it contracts over.

torch's gate math, with xw = x W_ih^T + b_ih computed before the kernel and the hidden-side
pre-activation gh = h_{t-1} W_hh^T + b_hh computed inside it (b_hn must stay inside r * (...)):
    r = sigmoid(xw_r + gh_r)   z = sigmoid(xw_z + gh_z)   n = tanh(xw_n + r * gh_n)
    h_t = (1 - z) * n + z * h_{t-1}

State lives in small float32 scratch buffers in global memory (L1/L2 resident): h ping-pongs
between two slots so that a step reads h_{t-1} while writing h_t, and a barrier closes each
step. RESIDENT=True (the whole H fits one block) loads the recurrent weights once, before the
time loop, and keeps them on chip; RESIDENT=False streams weight tiles from global memory every
step, which works for any hidden size. recgen/ops/config.py chooses between them. The time loops
are kernels/recurrent/steps.py's forward_steps and backward_steps; this module holds the GRU's
step math (gru_cell, gru_gate_grads), which kernels/recurrent/gru_persistent.py shares.
"""

import triton
import triton.language as tl

from recgen.kernels.math import sigmoid, sigmoid_grad, tanh, tanh_grad
from recgen.kernels.recurrent.steps import (backward_steps, batch_tile, direction, forward_steps, gate_inputs,
                                            load_gates, resident_tiles, store_gates, tile_offsets)


@triton.jit
def _gru_fwd_kernel(
    xw_ptr,       # (T, B, D*3H) input projection x W_ih^T + b_ih, last dim contiguous
    w_hh_ptr,     # (D, 3H, H) recurrent weights, contiguous
    b_hh_ptr,     # (D, 3H) recurrent bias (HAS_BIAS)
    lengths_ptr,  # (B,) int32 valid steps per row (HAS_LENGTHS)
    y_ptr,        # (T, B, D*H) out: hidden states, zero at padding, last dim contiguous
    saved_ptr,    # (D, T, B, 4H) float32 out: r, z, n and gh_n = h W_hn^T + b_hn, zero at padding
    h_state_ptr,  # (D, 2, B, H) float32 in/out: slot 0 holds h0; slot T % 2 ends with h_n
    T, B, H,
    stride_xt, stride_xb, stride_yt, stride_yb,
    first_reverse,  # 1: direction 0 runs reversed (a lone reverse direction)
    HAS_LENGTHS: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE: tl.constexpr,
    RESIDENT: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # SAVE=False (inference): r, z, n and gh_n are not written.
    mask_b, rows, lengths = batch_tile(lengths_ptr, B, T, HAS_LENGTHS, BLOCK_B)
    d, rev = direction(first_reverse)
    # This program's direction: its block of every per-direction tensor.
    xw_ptr, y_ptr, w_hh_ptr, b_hh_ptr, saved_ptr, h_state_ptr = gru_fwd_blocks(
        d, T, B, H, xw_ptr, y_ptr, w_hh_ptr, b_hh_ptr, saved_ptr, h_state_ptr)
    ar_h = tl.arange(0, BLOCK_H)
    ar_p = tl.arange(0, BLOCK_P)
    # W_g^T blocks (H_in, H_out), held for the whole sequence when RESIDENT.
    w = resident_tiles(w_hh_ptr, 3, H, H, ar_p, ar_h, 1, H, H, H, RESIDENT)
    forward_steps(gru_inputs, gru_step, (b_hh_ptr, saved_ptr), w, xw_ptr, w_hh_ptr, y_ptr, h_state_ptr, mask_b, rows,
                  lengths, rev, ar_h, ar_p, T, B, H, H, stride_xt, stride_xb, stride_yt, stride_yb, RESIDENT,
                  DOT_FP32, INPUT_PRECISION, BLOCK_B, BLOCK_H, BLOCK_P, G=3, HAS_BIAS=HAS_BIAS, RELU=False,
                  SAVE=SAVE, HAS_PROJ=False, w_r=(), w_hr_ptr=w_hh_ptr, m_ptr=y_ptr)  # no projection: unread


@triton.jit
def gru_fwd_blocks(d, T, B, H, xw_ptr, y_ptr, w_hh_ptr, b_hh_ptr, saved_ptr, h_state_ptr):
    """Direction d's block of each per-direction tensor of a GRU forward (one layout, both modes)."""
    return (xw_ptr + d * 3 * H, y_ptr + d * H, w_hh_ptr + d * 3 * H * H, b_hh_ptr + d * 3 * H,
            saved_ptr + d * T * B * 4 * H, h_state_ptr + d * 2 * B * H)


@triton.jit
def gru_bwd_blocks(d, T, B, H, dy_ptr, saved_ptr, h_prev_ptr, w_hh_ptr, dxw_ptr, dghn_ptr, dh_state_ptr):
    """Direction d's block of each per-direction tensor of a GRU backward (one layout, both modes)."""
    return (dy_ptr + d * T * B * H, saved_ptr + d * T * B * 4 * H, h_prev_ptr + d * T * B * H,
            w_hh_ptr + d * 3 * H * H, dxw_ptr + d * T * B * 3 * H, dghn_ptr + d * T * B * H,
            dh_state_ptr + d * 2 * B * H)


@triton.jit
def gate_bias(b_ptr, G: tl.constexpr, H, offs_h, mask_h, HAS_BIAS: tl.constexpr):
    """The G gates' bias columns offs_h of a (G*H,) bias, in float32 (() without HAS_BIAS)."""
    out = ()
    if HAS_BIAS:
        for g in tl.static_range(G):
            out = out + (tl.load(b_ptr + g * H + offs_h, mask=mask_h, other=0.0).to(tl.float32),)
    return out


@triton.jit
def biased_zeros(b, G: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """The G accumulators of the hidden-side pre-activations gh_g = h_{t-1} W_hg^T + b_hg before
    the dots: zero, plus the bias columns `b` (gate_bias) with HAS_BIAS."""
    out = ()
    for g in tl.static_range(G):
        acc = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
        if HAS_BIAS:
            acc += b[g][None, :]
        out = out + (acc,)
    return out


@triton.jit
def gru_inputs(cell, x_row, offs_h, mask_h, live_mask, H, G: tl.constexpr, HAS_BIAS: tl.constexpr,
               BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """INIT of the GRU loop: b_hh's columns, read for this block (the xw side joins in gru_cell)."""
    b_hh_ptr, saved_ptr = cell
    return biased_zeros(gate_bias(b_hh_ptr, G, H, offs_h, mask_h, HAS_BIAS), G, HAS_BIAS, BLOCK_B, BLOCK_H)


@triton.jit
def gru_cell(x_row, acc, h_old, saved_ptr, t, rows, offs_h, B, H, live_mask, in_bounds, SAVE: tl.constexpr):
    """One GRU step on a tile, from the hidden-side pre-activations `acc` (gh_r, gh_z, gh_n):
    reads the input side (x_row: this step's xw rows), returns h_t = (1 - z) n + z h_{t-1} and,
    with SAVE, writes r, z, n and gh_n for the backward (zero at padding)."""
    x_r, x_z, x_n = gate_inputs(x_row, 3, H, offs_h, live_mask)
    gr = sigmoid(x_r + acc[0])
    gz = sigmoid(x_z + acc[1])
    gn = tanh(x_n + gr * acc[2])
    if SAVE:
        store_gates(saved_ptr + (t * B + rows)[:, None] * (4 * H) + offs_h[None, :], (gr, gz, gn, acc[2]), 4, H,
                    live_mask, in_bounds)
    return (1.0 - gz) * gn + gz * h_old


@triton.jit
def gru_step(cell, acc, x_row, h_base, h_off, t, rows, offs_h, B, H, live_mask, in_bounds, HAS_PROJ: tl.constexpr,
             RELU: tl.constexpr, SAVE: tl.constexpr):
    """CELL of the GRU loops (kernels/recurrent/steps.py): h_{t-1} of these columns, gru_cell."""
    b, saved_ptr = cell
    h_old = tl.load(h_base + h_off, mask=in_bounds, other=0.0)
    return gru_cell(x_row, acc, h_old, saved_ptr, t, rows, offs_h, B, H, live_mask, in_bounds, SAVE), h_old


@triton.jit
def gru_gate_grads(dh, saved_ptr, h_prev_ptr, dxw_ptr, dghn_ptr, t, rows, offs_h, B, H, live_mask, in_bounds):
    """Step t's gate gradients of a (rows x units) block, from dh, the total gradient of h_t:
    stores the r, z, n pre-activation gradients (dxw) and dghn (that of gh_n = h W_hn^T + b_hn);
    returns z, for the direct term dh_t * z of dh_{t-1}."""
    seq = tile_offsets(t * B + rows, offs_h, H)
    gr, gz, gn, ghn = load_gates(saved_ptr + tile_offsets(t * B + rows, offs_h, 4 * H), 4, H, live_mask)
    h_prev = tl.load(h_prev_ptr + seq, mask=live_mask, other=0.0).to(tl.float32)
    dn_pre = tanh_grad(dh * (1.0 - gz), gn)
    dz_pre = sigmoid_grad(dh * (h_prev - gn), gz)
    dr_pre = sigmoid_grad(dn_pre * ghn, gr)
    store_gates(dxw_ptr + tile_offsets(t * B + rows, offs_h, 3 * H), (dr_pre, dz_pre, dn_pre), 3, H, live_mask,
                in_bounds)
    tl.store(dghn_ptr + seq, tl.where(live_mask, dn_pre * gr, 0.0), mask=in_bounds)
    return gz


@triton.jit
def gru_grads(cell, dm, carry_base, carry_off, dst, t, t_prev, has_prev, rows, offs_h, B, H, P, live_mask, in_bounds,
              HAS_PROJ: tl.constexpr, RELU: tl.constexpr):
    """GRADS of the one-program-per-tile GRU loop: gru_gate_grads of dh_t (its backward_steps
    adds the direct term dh_t * z after the contraction)."""
    dy_ptr, saved_ptr, h_prev_ptr, dxw_ptr, dghn_ptr = cell
    # Total gradient of h_t = output gradient + gradient carried from step t+1.
    dh = tl.load(dy_ptr + tile_offsets(t * B + rows, offs_h, H), mask=live_mask, other=0.0).to(tl.float32) \
        + tl.load(carry_base + carry_off, mask=live_mask, other=0.0)
    gru_gate_grads(dh, saved_ptr, h_prev_ptr, dxw_ptr, dghn_ptr, t, rows, offs_h, B, H, live_mask, in_bounds)


@triton.jit
def _gru_bwd_kernel(
    dy_ptr,       # (D, T, B, H) gradient of the outputs, contiguous
    saved_ptr,    # (D, T, B, 4H) float32 r, z, n, gh_n from the forward
    h_prev_ptr,   # (D, T, B, H) h_{t-1} of each step in the direction of travel, contiguous
    w_hh_ptr,     # (D, 3H, H) recurrent weights, contiguous
    lengths_ptr,  # (B,) int32 valid steps per row (HAS_LENGTHS)
    dxw_ptr,      # (D, T, B, 3H) float32 out: gradient of xw (dr_pre, dz_pre, dn_pre), zero at padding
    dghn_ptr,     # (D, T, B, H) float32 out: gradient of gh_n (dn_pre * r), zero at padding
    dh_state_ptr, # (D, 2, B, H) float32 in/out: slot 0 holds dh_n; slot T % 2 ends with dh_0
    T, B, H,
    first_reverse,  # 1: direction 0 runs reversed (a lone reverse direction)
    HAS_LENGTHS: tl.constexpr,
    RESIDENT: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    mask_b, rows, lengths = batch_tile(lengths_ptr, B, T, HAS_LENGTHS, BLOCK_B)
    d, rev = direction(first_reverse)
    dy_ptr, saved_ptr, h_prev_ptr, w_hh_ptr, dxw_ptr, dghn_ptr, dh_state_ptr = gru_bwd_blocks(
        d, T, B, H, dy_ptr, saved_ptr, h_prev_ptr, w_hh_ptr, dxw_ptr, dghn_ptr, dh_state_ptr)
    ar_h = tl.arange(0, BLOCK_H)
    ar_p = tl.arange(0, BLOCK_P)
    # W_g blocks (H_out, H_in), the transpose of the forward's view, for dgh_g W_g, held when RESIDENT.
    w = resident_tiles(w_hh_ptr, 3, H, H, ar_h, ar_p, H, 1, H, H, RESIDENT)
    # dh_{t-1} = dh_t * z + (dr_pre, dz_pre, dn_pre * r) W_hh; z is slot 1 of the saved (.., 4H) rows.
    backward_steps(gru_grads, (dy_ptr, saved_ptr, h_prev_ptr, dxw_ptr, dghn_ptr), (dxw_ptr, dxw_ptr, dghn_ptr),
                   (3 * H, 3 * H, H), w, w_hh_ptr, dy_ptr, dh_state_ptr, mask_b, rows, lengths, rev, ar_h, ar_p,
                   T, B, H, H, RESIDENT, DOT_FP32, INPUT_PRECISION, BLOCK_B, BLOCK_H, BLOCK_P, G=3, RELU=False,
                   gate_offs=(0, H, 0), DIRECT=True, direct=(saved_ptr, 4 * H, H), HAS_PROJ=False, w_r=(),
                   w_hr_ptr=w_hh_ptr, dh_ptr=dy_ptr)  # no projection: unread
