"""LSTM recurrence kernels: one launch runs the whole time loop of one layer and direction.

Glossary: T steps, B batch, D directions (one program per batch tile and direction), H hidden, P recurrent width (proj_size, or H without projection),
G = 4 gates in torch's order (i, f, g, o). One program owns BLOCK_B batch rows for all T steps.

State lives in small float32 scratch buffers in global memory (L1/L2 resident): h ping-pongs
between two slots so that a step reads h_{t-1} while writing h_t, and a barrier closes each
step. RESIDENT=True (the whole H and P fit one block) loads the recurrent weights once, before
the time loop, and keeps them on chip; RESIDENT=False streams weight tiles from global memory
every step, which works for any hidden size. recgen/ops/config.py chooses between them. The time
loops are kernels/recurrent/steps.py's forward_steps and backward_steps; this module holds the
LSTM's step math (lstm_cell, lstm_gate_grads), which kernels/recurrent/lstm_persistent.py shares.
"""

import triton
import triton.language as tl

from recgen.kernels.math import sigmoid, sigmoid_grad, tanh, tanh_grad
from recgen.kernels.recurrent.steps import (backward_steps, batch_tile, direction, forward_steps, input_gates,
                                            load_gates, load_rows, resident_tiles, store_gates, store_rows,
                                            tile_offsets)


@triton.jit
def _lstm_fwd_kernel(
    xw_ptr,       # (T, B, D*4H) input projection x W_ih^T + b_ih + b_hh, last dim contiguous
    w_hh_ptr,     # (D, 4H, P) recurrent weights, contiguous
    w_hr_ptr,     # (D, P, H) projection weights, contiguous (HAS_PROJ)
    lengths_ptr,  # (B,) int32 valid steps per row (HAS_LENGTHS)
    y_ptr,        # (T, B, D*P) out: hidden states, zero at padding, last dim contiguous
    gates_ptr,    # (D, T, B, 4H) float32 out: activated gates, saved for the backward
    c_ptr,        # (D, T, B, H) float32 out: cell states, saved for the backward
    m_ptr,        # (D, T, B, H) float32 out: o * tanh(c) before the projection (HAS_PROJ)
    h_state_ptr,  # (D, 2, B, P) float32 in/out: slot 0 holds h0; slot T % 2 ends with h_n
    c_state_ptr,  # (D, B, H) float32 in/out: holds c0, ends with c_n
    T, B, H, P,
    stride_xt, stride_xb, stride_yt, stride_yb,
    first_reverse,  # 1: direction 0 runs reversed (a lone reverse direction)
    HAS_LENGTHS: tl.constexpr, HAS_PROJ: tl.constexpr, SAVE: tl.constexpr,
    RESIDENT: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # SAVE=False (inference): gates and c are not written, most of the forward's store traffic.
    mask_b, rows, lengths = batch_tile(lengths_ptr, B, T, HAS_LENGTHS, BLOCK_B)
    d, rev = direction(first_reverse)
    # This program's direction: its block of every per-direction tensor.
    xw_ptr += d * 4 * H
    y_ptr += d * P
    w_hh_ptr += d * 4 * H * P
    w_hr_ptr += d * P * H
    gates_ptr += d * T * B * 4 * H
    c_ptr += d * T * B * H
    m_ptr += d * T * B * H
    h_state_ptr += d * 2 * B * P
    c_state_ptr += d * B * H
    ar_h = tl.arange(0, BLOCK_H)
    ar_p = tl.arange(0, BLOCK_P)
    # W_g^T blocks (P, H) and W_hr^T (H, P), held for the whole sequence when RESIDENT.
    w = resident_tiles(w_hh_ptr, 4, H, P, ar_p, ar_h, 1, P, P, H, RESIDENT)
    w_r = resident_tiles(w_hr_ptr, 1, P, H, ar_h, ar_p, 1, H, H, P, RESIDENT and HAS_PROJ)
    forward_steps(input_gates, lstm_step, (c_state_ptr, gates_ptr, c_ptr), w, xw_ptr, w_hh_ptr, y_ptr, h_state_ptr,
                  mask_b, rows, lengths, rev, ar_h, ar_p, T, B, H, P, stride_xt, stride_xb, stride_yt, stride_yb,
                  RESIDENT, DOT_FP32, INPUT_PRECISION, BLOCK_B, BLOCK_H, BLOCK_P, G=4, HAS_BIAS=False, RELU=False,
                  SAVE=SAVE, HAS_PROJ=HAS_PROJ, w_r=w_r, w_hr_ptr=w_hr_ptr, m_ptr=m_ptr)


@triton.jit
def lstm_cell(acc, c_state_ptr, gates_ptr, c_ptr, t, rows, offs_h, B, H, live_mask, in_bounds, SAVE: tl.constexpr):
    """One LSTM step on a tile, from the gate pre-activations `acc` (i, f, g, o): the gates, the
    new cell state (written to c_state where the row is active, `live_mask`; the rest of the
    `in_bounds` elements retain their carry) and, with SAVE, the gates and c_t saved for the
    backward (zero at padding). Returns h_t (before a projection)."""
    gi = sigmoid(acc[0])
    gf = sigmoid(acc[1])
    gg = tanh(acc[2])
    go = sigmoid(acc[3])
    own = tile_offsets(rows, offs_h, H)
    c_old = tl.load(c_state_ptr + own, mask=in_bounds, other=0.0)
    c_new = gf * c_old + gi * gg
    tl.store(c_state_ptr + own, tl.where(live_mask, c_new, c_old), mask=in_bounds)
    if SAVE:
        store_gates(gates_ptr + (t * B + rows)[:, None] * (4 * H) + offs_h[None, :], (gi, gf, gg, go), 4, H, live_mask,
                    in_bounds)
        store_rows(c_ptr, t * B + rows, offs_h, H, tl.where(live_mask, c_new, 0.0), in_bounds)
    return go * tanh(c_new)


@triton.jit
def lstm_step(cell, acc, x_row, h_base, h_off, t, rows, offs_h, B, H, live_mask, in_bounds, HAS_PROJ: tl.constexpr,
              RELU: tl.constexpr, SAVE: tl.constexpr):
    """CELL of the LSTM loops (kernels/recurrent/steps.py): lstm_cell, and h_{t-1} of these
    columns unless a projection follows (HAS_PROJ: the step returns m_t)."""
    c_state_ptr, gates_ptr, c_ptr = cell
    m_new = lstm_cell(acc, c_state_ptr, gates_ptr, c_ptr, t, rows, offs_h, B, H, live_mask, in_bounds, SAVE)
    h_old = 0.0
    if not HAS_PROJ:
        h_old = tl.load(h_base + h_off, mask=in_bounds, other=0.0)
    return m_new, h_old


@triton.jit
def lstm_gate_grads(cell, dm, carry_base, carry_off, dst, t, t_prev, has_prev, rows, offs_h, B, H, P, live_mask,
                    in_bounds, HAS_PROJ: tl.constexpr, RELU: tl.constexpr):
    """GRADS of the LSTM loops: step t's gate gradients of a (rows x units) block from dm, the
    gradient of m_t = o * tanh(c_t) (without a projection dh_t, read here): stores the four gate
    pre-activation gradients (dgates) and updates the dc carry in dc_state."""
    dy_ptr, gates_ptr, c_ptr, c0_ptr, dgates_ptr, dc_state_ptr = cell
    if not HAS_PROJ:
        dm = tl.load(dy_ptr + (t * B + rows)[:, None] * P + offs_h[None, :], mask=live_mask, other=0.0).to(tl.float32) \
            + tl.load(carry_base + carry_off, mask=live_mask, other=0.0)
    g_row = (t * B + rows)[:, None] * (4 * H) + offs_h[None, :]
    gi, gf, gg, go = load_gates(gates_ptr + g_row, 4, H, live_mask)
    c = load_rows(c_ptr, t * B + rows, offs_h, H, live_mask)
    # c_{t-1}: the previous step's cell state, or c0 on a sequence's first step.
    state = tile_offsets(rows, offs_h, H)
    c_prev = load_rows(c_ptr, t_prev * B + rows, offs_h, H, live_mask & has_prev[:, None]) \
        + tl.load(c0_ptr + state, mask=live_mask & ~has_prev[:, None], other=0.0)
    dc_carry = tl.load(dc_state_ptr + state, mask=in_bounds, other=0.0)
    tc = tanh(c)
    dc = dc_carry + tanh_grad(dm * go, tc)
    store_gates(dgates_ptr + g_row, (sigmoid_grad(dc * gg, gi), sigmoid_grad(dc * c_prev, gf), tanh_grad(dc * gi, gg),
                                     sigmoid_grad(dm * tc, go)), 4, H, live_mask, in_bounds)
    tl.store(dc_state_ptr + state, tl.where(live_mask, dc * gf, dc_carry), mask=in_bounds)


@triton.jit
def _lstm_bwd_kernel(
    dy_ptr,       # (D, T, B, P) gradient of the outputs, contiguous
    gates_ptr,    # (D, T, B, 4H) float32 activated gates from the forward
    c_ptr,        # (D, T, B, H) float32 cell states from the forward
    c0_ptr,       # (D, B, H) float32 initial cell state
    w_hh_ptr,     # (D, 4H, P) recurrent weights, contiguous
    w_hr_ptr,     # (D, P, H) projection weights, contiguous (HAS_PROJ)
    lengths_ptr,  # (B,) int32 valid steps per row (HAS_LENGTHS)
    dgates_ptr,   # (D, T, B, 4H) float32 out: gradient of the gate pre-activations, zero at padding
    dh_ptr,       # (D, T, B, P) float32 out: total gradient of each h_t (HAS_PROJ, for dW_hr)
    dh_state_ptr, # (D, 2, B, P) float32 in/out: slot 0 holds dh_n; slot T % 2 ends with dh_0
    dc_state_ptr, # (D, B, H) float32 in/out: holds dc_n, ends with dc_0
    T, B, H, P,
    first_reverse,  # 1: direction 0 runs reversed (a lone reverse direction)
    HAS_LENGTHS: tl.constexpr, HAS_PROJ: tl.constexpr,
    RESIDENT: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    mask_b, rows, lengths = batch_tile(lengths_ptr, B, T, HAS_LENGTHS, BLOCK_B)
    d, rev = direction(first_reverse)
    dy_ptr += d * T * B * P
    gates_ptr += d * T * B * 4 * H
    c_ptr += d * T * B * H
    c0_ptr += d * B * H
    w_hh_ptr += d * 4 * H * P
    w_hr_ptr += d * P * H
    dgates_ptr += d * T * B * 4 * H
    dh_ptr += d * T * B * P
    dh_state_ptr += d * 2 * B * P
    dc_state_ptr += d * B * H
    ar_h = tl.arange(0, BLOCK_H)
    ar_p = tl.arange(0, BLOCK_P)
    # W_g blocks (H, P), the transpose of the forward's view, for dh_{t-1} = sum_g dgate_g W_g,
    # and W_hr (P, H) for dm = dh W_hr, held when RESIDENT.
    w = resident_tiles(w_hh_ptr, 4, H, P, ar_h, ar_p, P, 1, H, P, RESIDENT)
    w_r = resident_tiles(w_hr_ptr, 1, P, H, ar_p, ar_h, H, 1, P, H, RESIDENT and HAS_PROJ)
    backward_steps(lstm_gate_grads, (dy_ptr, gates_ptr, c_ptr, c0_ptr, dgates_ptr, dc_state_ptr),
                   (dgates_ptr, dgates_ptr, dgates_ptr, dgates_ptr), (4 * H, 4 * H, 4 * H, 4 * H), w, w_hh_ptr, dy_ptr,
                   dh_state_ptr, mask_b, rows, lengths, rev, ar_h, ar_p, T, B, H, P, RESIDENT, DOT_FP32,
                   INPUT_PRECISION, BLOCK_B, BLOCK_H, BLOCK_P, G=4, RELU=False, gate_offs=(0, H, 2 * H, 3 * H),
                   DIRECT=False, direct=(), HAS_PROJ=HAS_PROJ, w_r=w_r, w_hr_ptr=w_hr_ptr, dh_ptr=dh_ptr)
