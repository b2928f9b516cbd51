"""LSTM recurrence kernels: one launch runs the whole time loop of one layer and direction.

Glossary: T steps, B batch, D directions (one program per batch tile and direction), H hidden, P recurrent width (proj_size, or H without projection),
G = 4 gates in torch's order (i, f, g, o). One program owns BLOCK_B batch rows for all T steps.

State lives in small float32 scratch buffers in global memory (L1/L2 resident): h ping-pongs
between two slots so that a step reads h_{t-1} while writing h_t, and a barrier closes each
step. RESIDENT=True (the whole H and P fit one block) loads the recurrent weights once, before
the time loop, and keeps them on chip; RESIDENT=False streams weight tiles from global memory
every step, which works for any hidden size. recgen/ops/config.py chooses between them.
"""

import triton
import triton.language as tl

from recgen.kernels.math import mma, sigmoid, tanh
from recgen.kernels.recurrent.steps import batch_tile, direction, load_tile, step_time_index


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

    if RESIDENT:
        # W_g^T blocks (P, H) held for the whole sequence.
        w_i = load_tile(w_hh_ptr + 0 * H * P, ar_p, ar_h, 1, P, P, H)
        w_f = load_tile(w_hh_ptr + 1 * H * P, ar_p, ar_h, 1, P, P, H)
        w_g = load_tile(w_hh_ptr + 2 * H * P, ar_p, ar_h, 1, P, P, H)
        w_o = load_tile(w_hh_ptr + 3 * H * P, ar_p, ar_h, 1, P, P, H)
        if HAS_PROJ:
            # W_hr^T (H, P)
            w_r = load_tile(w_hr_ptr, ar_h, ar_p, 1, H, H, P)

    for s in range(T):
        t, active = step_time_index(s, lengths, rev)
        live = mask_b & active
        src = h_state_ptr + (s % 2) * B * P
        dst = h_state_ptr + ((s + 1) % 2) * B * P
        x_row = xw_ptr + t * stride_xt + rows * stride_xb
        # Gate columns, one H block at a time (a single block when RESIDENT).
        for n0 in range(0, H, BLOCK_H):
            offs_h = n0 + ar_h
            mask_h = offs_h < H
            m2 = live[:, None] & mask_h[None, :]
            acc_i = tl.load(x_row[:, None] + (0 * H + offs_h)[None, :], mask=m2, other=0.0).to(tl.float32)
            acc_f = tl.load(x_row[:, None] + (1 * H + offs_h)[None, :], mask=m2, other=0.0).to(tl.float32)
            acc_g = tl.load(x_row[:, None] + (2 * H + offs_h)[None, :], mask=m2, other=0.0).to(tl.float32)
            acc_o = tl.load(x_row[:, None] + (3 * H + offs_h)[None, :], mask=m2, other=0.0).to(tl.float32)
            for k0 in range(0, P, BLOCK_P):
                offs_k = k0 + ar_p
                mask_k = offs_k < P
                h_prev = tl.load(src + rows[:, None] * P + offs_k[None, :],
                                 mask=mask_b[:, None] & mask_k[None, :], other=0.0)
                if not RESIDENT:
                    w_i = load_tile(w_hh_ptr + 0 * H * P, offs_k, offs_h, 1, P, P, H)
                    w_f = load_tile(w_hh_ptr + 1 * H * P, offs_k, offs_h, 1, P, P, H)
                    w_g = load_tile(w_hh_ptr + 2 * H * P, offs_k, offs_h, 1, P, P, H)
                    w_o = load_tile(w_hh_ptr + 3 * H * P, offs_k, offs_h, 1, P, P, H)
                acc_i += mma(h_prev, w_i, DOT_FP32, INPUT_PRECISION)
                acc_f += mma(h_prev, w_f, DOT_FP32, INPUT_PRECISION)
                acc_g += mma(h_prev, w_g, DOT_FP32, INPUT_PRECISION)
                acc_o += mma(h_prev, w_o, DOT_FP32, INPUT_PRECISION)
            keep = mask_b[:, None] & mask_h[None, :]
            m_new = lstm_cell(acc_i, acc_f, acc_g, acc_o, c_state_ptr, gates_ptr, c_ptr, t, rows, offs_h, B, H,
                              m2, keep, SAVE)
            seq_off = (t * B + rows)[:, None] * H + offs_h[None, :]
            if HAS_PROJ:
                tl.store(m_ptr + seq_off, tl.where(m2, m_new, 0.0), mask=keep)
            else:
                h_old = tl.load(src + rows[:, None] * P + offs_h[None, :], mask=keep, other=0.0)
                tl.store(dst + rows[:, None] * P + offs_h[None, :], tl.where(m2, m_new, h_old), mask=keep)
                tl.store(y_ptr + t[:, None] * stride_yt + rows[:, None] * stride_yb + offs_h[None, :],
                         tl.where(m2, m_new, 0.0).to(y_ptr.dtype.element_ty), mask=keep)
        if HAS_PROJ:
            tl.debug_barrier()  # every m_t column is written before the projection reads it
            for p0 in range(0, P, BLOCK_P):
                offs_p = p0 + ar_p
                mask_p = offs_p < P
                acc = tl.zeros([BLOCK_B, BLOCK_P], dtype=tl.float32)
                for k0 in range(0, H, BLOCK_H):
                    offs_k = k0 + ar_h
                    mask_k = offs_k < H
                    m_k = tl.load(m_ptr + (t * B + rows)[:, None] * H + offs_k[None, :],
                                  mask=mask_b[:, None] & mask_k[None, :], other=0.0)
                    if not RESIDENT:
                        w_r = load_tile(w_hr_ptr, offs_k, offs_p, 1, H, H, P)
                    acc += mma(m_k, w_r, DOT_FP32, INPUT_PRECISION)
                keep = mask_b[:, None] & mask_p[None, :]
                m2 = live[:, None] & mask_p[None, :]
                h_old = tl.load(src + rows[:, None] * P + offs_p[None, :], mask=keep, other=0.0)
                tl.store(dst + rows[:, None] * P + offs_p[None, :], tl.where(m2, acc, h_old), mask=keep)
                tl.store(y_ptr + t[:, None] * stride_yt + rows[:, None] * stride_yb + offs_p[None, :],
                         tl.where(m2, acc, 0.0).to(y_ptr.dtype.element_ty), mask=keep)
        tl.debug_barrier()  # h_t is complete before step s + 1 reads it


@triton.jit
def lstm_cell(acc_i, acc_f, acc_g, acc_o, c_state_ptr, gates_ptr, c_ptr, t, rows, offs_h, B, H, m2, keep,
              SAVE: tl.constexpr):
    """One LSTM step on a tile, from the gate pre-activations: the gates, the new cell state
    (written to c_state where the row is active, `m2`) and, with SAVE, the gates and c_t saved
    for the backward (zero at padding). Returns h_t (before a projection)."""
    gi = sigmoid(acc_i)
    gf = sigmoid(acc_f)
    gg = tanh(acc_g)
    go = sigmoid(acc_o)
    own = rows[:, None] * H + offs_h[None, :]
    c_old = tl.load(c_state_ptr + own, mask=keep, other=0.0)
    c_new = gf * c_old + gi * gg
    tl.store(c_state_ptr + own, tl.where(m2, c_new, c_old), mask=keep)
    if SAVE:
        g_row = gates_ptr + (t * B + rows)[:, None] * (4 * H) + offs_h[None, :]
        tl.store(g_row + 0 * H, tl.where(m2, gi, 0.0), mask=keep)
        tl.store(g_row + 1 * H, tl.where(m2, gf, 0.0), mask=keep)
        tl.store(g_row + 2 * H, tl.where(m2, gg, 0.0), mask=keep)
        tl.store(g_row + 3 * H, tl.where(m2, go, 0.0), mask=keep)
        tl.store(c_ptr + (t * B + rows)[:, None] * H + offs_h[None, :], tl.where(m2, c_new, 0.0), mask=keep)
    return go * tanh(c_new)


@triton.jit
def lstm_gate_grads(dm, gates_ptr, c_ptr, c0_ptr, dgates_ptr, dc_state_ptr, t, t_prev, has_prev, rows,
                    offs_h, B, H, m2, keep):
    """Step t's gate gradients of a (rows x units) block, from dm, the gradient of m_t = o *
    tanh(c_t): stores the four gate pre-activation gradients (dgates) and updates the dc carry in
    dc_state. Shared with kernels/recurrent/lstm_persistent.py."""
    g_row = (t * B + rows)[:, None] * (4 * H) + offs_h[None, :]
    gi = tl.load(gates_ptr + g_row + 0 * H, mask=m2, other=0.0)
    gf = tl.load(gates_ptr + g_row + 1 * H, mask=m2, other=0.0)
    gg = tl.load(gates_ptr + g_row + 2 * H, mask=m2, other=0.0)
    go = tl.load(gates_ptr + g_row + 3 * H, mask=m2, other=0.0)
    c = tl.load(c_ptr + (t * B + rows)[:, None] * H + offs_h[None, :], mask=m2, other=0.0)
    # c_{t-1}: the previous step's cell state, or c0 on a sequence's first step.
    state = rows[:, None] * H + offs_h[None, :]
    c_prev = tl.load(c_ptr + (t_prev * B + rows)[:, None] * H + offs_h[None, :],
                     mask=m2 & has_prev[:, None], other=0.0) \
        + tl.load(c0_ptr + state, mask=m2 & ~has_prev[:, None], other=0.0)
    dc_carry = tl.load(dc_state_ptr + state, mask=keep, other=0.0)
    tc = tanh(c)
    dc = dc_carry + dm * go * (1.0 - tc * tc)
    tl.store(dgates_ptr + g_row + 0 * H, tl.where(m2, dc * gg * gi * (1.0 - gi), 0.0), mask=keep)
    tl.store(dgates_ptr + g_row + 1 * H, tl.where(m2, dc * c_prev * gf * (1.0 - gf), 0.0), mask=keep)
    tl.store(dgates_ptr + g_row + 2 * H, tl.where(m2, dc * gi * (1.0 - gg * gg), 0.0), mask=keep)
    tl.store(dgates_ptr + g_row + 3 * H, tl.where(m2, dm * tc * go * (1.0 - go), 0.0), mask=keep)
    tl.store(dc_state_ptr + state, tl.where(m2, dc * gf, dc_carry), mask=keep)


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

    if RESIDENT:
        # W_g blocks (H, P), the transpose of the forward's view, for dh_{t-1} = sum_g dgate_g W_g.
        w_i = load_tile(w_hh_ptr + 0 * H * P, ar_h, ar_p, P, 1, H, P)
        w_f = load_tile(w_hh_ptr + 1 * H * P, ar_h, ar_p, P, 1, H, P)
        w_g = load_tile(w_hh_ptr + 2 * H * P, ar_h, ar_p, P, 1, H, P)
        w_o = load_tile(w_hh_ptr + 3 * H * P, ar_h, ar_p, P, 1, H, P)
        if HAS_PROJ:
            # W_hr (P, H) for dm = dh W_hr.
            w_r = load_tile(w_hr_ptr, ar_p, ar_h, H, 1, P, H)

    for i in range(T):
        s = T - 1 - i
        t, active = step_time_index(s, lengths, rev)
        live = mask_b & active
        src = dh_state_ptr + (i % 2) * B * P
        dst = dh_state_ptr + ((i + 1) % 2) * B * P
        t_prev = tl.where(rev, t + 1, t - 1)
        has_prev = (lengths * 0 + s) > 0  # per row, so it broadcasts into the load masks
        if HAS_PROJ:
            # Total gradient of h_t = output gradient + gradient carried from step t+1.
            for p0 in range(0, P, BLOCK_P):
                offs_p = p0 + ar_p
                keep = mask_b[:, None] & (offs_p < P)[None, :]
                m2 = live[:, None] & (offs_p < P)[None, :]
                seq = (t * B + rows)[:, None] * P + offs_p[None, :]
                dh_tot = tl.load(dy_ptr + seq, mask=m2, other=0.0).to(tl.float32) \
                    + tl.load(src + rows[:, None] * P + offs_p[None, :], mask=m2, other=0.0)
                tl.store(dh_ptr + seq, tl.where(m2, dh_tot, 0.0), mask=keep)
            tl.debug_barrier()
        for n0 in range(0, H, BLOCK_H):
            offs_h = n0 + ar_h
            mask_h = offs_h < H
            keep = mask_b[:, None] & mask_h[None, :]
            m2 = live[:, None] & mask_h[None, :]
            if HAS_PROJ:
                dm = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
                for k0 in range(0, P, BLOCK_P):
                    offs_k = k0 + ar_p
                    mask_k = offs_k < P
                    dh_k = tl.load(dh_ptr + (t * B + rows)[:, None] * P + offs_k[None, :],
                                   mask=mask_b[:, None] & mask_k[None, :], other=0.0)
                    if not RESIDENT:
                        w_r = load_tile(w_hr_ptr, offs_k, offs_h, H, 1, P, H)
                    dm += mma(dh_k, w_r, DOT_FP32, INPUT_PRECISION)
            else:
                dm = tl.load(dy_ptr + (t * B + rows)[:, None] * P + offs_h[None, :], mask=m2,
                             other=0.0).to(tl.float32) \
                    + tl.load(src + rows[:, None] * P + offs_h[None, :], mask=m2, other=0.0)
            lstm_gate_grads(dm, gates_ptr, c_ptr, c0_ptr, dgates_ptr, dc_state_ptr, t, t_prev, has_prev, rows,
                            offs_h, B, H, m2, keep)
        tl.debug_barrier()  # every gate gradient of step t is written before it is contracted
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + ar_p
            mask_p = offs_p < P
            acc = tl.zeros([BLOCK_B, BLOCK_P], dtype=tl.float32)
            for k0 in range(0, H, BLOCK_H):
                offs_k = k0 + ar_h
                mask_k = offs_k < H
                dg_row = dgates_ptr + (t * B + rows)[:, None] * (4 * H) + offs_k[None, :]
                dmask = mask_b[:, None] & mask_k[None, :]
                if not RESIDENT:
                    w_i = load_tile(w_hh_ptr + 0 * H * P, offs_k, offs_p, P, 1, H, P)
                    w_f = load_tile(w_hh_ptr + 1 * H * P, offs_k, offs_p, P, 1, H, P)
                    w_g = load_tile(w_hh_ptr + 2 * H * P, offs_k, offs_p, P, 1, H, P)
                    w_o = load_tile(w_hh_ptr + 3 * H * P, offs_k, offs_p, P, 1, H, P)
                acc += mma(tl.load(dg_row + 0 * H, mask=dmask, other=0.0), w_i, DOT_FP32, INPUT_PRECISION)
                acc += mma(tl.load(dg_row + 1 * H, mask=dmask, other=0.0), w_f, DOT_FP32, INPUT_PRECISION)
                acc += mma(tl.load(dg_row + 2 * H, mask=dmask, other=0.0), w_g, DOT_FP32, INPUT_PRECISION)
                acc += mma(tl.load(dg_row + 3 * H, mask=dmask, other=0.0), w_o, DOT_FP32, INPUT_PRECISION)
            keep = mask_b[:, None] & mask_p[None, :]
            m2 = live[:, None] & mask_p[None, :]
            carry = tl.load(src + rows[:, None] * P + offs_p[None, :], mask=keep, other=0.0)
            tl.store(dst + rows[:, None] * P + offs_p[None, :], tl.where(m2, acc, carry), mask=keep)
        tl.debug_barrier()  # dh_{t-1} is complete before the next step reads it
