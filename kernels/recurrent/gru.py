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
step, which works for any hidden size. recgen/ops/config.py chooses between them.
"""

import triton
import triton.language as tl

from recgen.kernels.math import mma, sigmoid, tanh
from recgen.kernels.recurrent.steps import batch_tile, direction, load_tile, step_time_index


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
    xw_ptr += d * 3 * H
    y_ptr += d * H
    w_hh_ptr += d * 3 * H * H
    b_hh_ptr += d * 3 * H
    saved_ptr += d * T * B * 4 * H
    h_state_ptr += d * 2 * B * H
    ar_h = tl.arange(0, BLOCK_H)
    ar_p = tl.arange(0, BLOCK_P)

    if RESIDENT:
        # W_g^T blocks (H_in, H_out) held for the whole sequence.
        w_r = load_tile(w_hh_ptr + 0 * H * H, ar_p, ar_h, 1, H, H, H)
        w_z = load_tile(w_hh_ptr + 1 * H * H, ar_p, ar_h, 1, H, H, H)
        w_n = load_tile(w_hh_ptr + 2 * H * H, ar_p, ar_h, 1, H, H, H)

    for s in range(T):
        t, active = step_time_index(s, lengths, rev)
        live = mask_b & active
        src = h_state_ptr + (s % 2) * B * H
        dst = h_state_ptr + ((s + 1) % 2) * B * H
        x_row = xw_ptr + t * stride_xt + rows * stride_xb
        # Gate columns, one H block at a time (a single block when RESIDENT).
        for n0 in range(0, H, BLOCK_H):
            offs_h = n0 + ar_h
            mask_h = offs_h < H
            m2 = live[:, None] & mask_h[None, :]
            keep = mask_b[:, None] & mask_h[None, :]
            # Hidden-side pre-activations gh_g = h_{t-1} W_hg^T + b_hg.
            acc_r = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            acc_z = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            acc_n = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            if HAS_BIAS:
                acc_r += tl.load(b_hh_ptr + 0 * H + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
                acc_z += tl.load(b_hh_ptr + 1 * H + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
                acc_n += tl.load(b_hh_ptr + 2 * H + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
            for k0 in range(0, H, BLOCK_P):
                offs_k = k0 + ar_p
                mask_k = offs_k < H
                h_k = tl.load(src + rows[:, None] * H + offs_k[None, :],
                              mask=mask_b[:, None] & mask_k[None, :], other=0.0)
                if not RESIDENT:
                    w_r = load_tile(w_hh_ptr + 0 * H * H, offs_k, offs_h, 1, H, H, H)
                    w_z = load_tile(w_hh_ptr + 1 * H * H, offs_k, offs_h, 1, H, H, H)
                    w_n = load_tile(w_hh_ptr + 2 * H * H, offs_k, offs_h, 1, H, H, H)
                acc_r += mma(h_k, w_r, DOT_FP32, INPUT_PRECISION)
                acc_z += mma(h_k, w_z, DOT_FP32, INPUT_PRECISION)
                acc_n += mma(h_k, w_n, DOT_FP32, INPUT_PRECISION)
            h_old = tl.load(src + rows[:, None] * H + offs_h[None, :], mask=keep, other=0.0)
            h_new = gru_cell(x_row, acc_r, acc_z, acc_n, h_old, saved_ptr, t, rows, offs_h, B, H, m2, keep, SAVE)
            tl.store(dst + rows[:, None] * H + offs_h[None, :], tl.where(m2, h_new, h_old), mask=keep)
            tl.store(y_ptr + t[:, None] * stride_yt + rows[:, None] * stride_yb + offs_h[None, :],
                     tl.where(m2, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=keep)
        tl.debug_barrier()  # h_t is complete before step s + 1 reads it


@triton.jit
def gru_cell(x_row, acc_r, acc_z, acc_n, h_old, saved_ptr, t, rows, offs_h, B, H, m2, keep, SAVE: tl.constexpr):
    """One GRU step on a tile, from the hidden-side pre-activations gh_g = h_{t-1} W_hg^T + b_hg:
    reads the input side (x_row: this step's xw rows), returns h_t = (1 - z) n + z h_{t-1} and,
    with SAVE, writes r, z, n and gh_n for the backward (zero at padding)."""
    x_r = tl.load(x_row[:, None] + (0 * H + offs_h)[None, :], mask=m2, other=0.0).to(tl.float32)
    x_z = tl.load(x_row[:, None] + (1 * H + offs_h)[None, :], mask=m2, other=0.0).to(tl.float32)
    x_n = tl.load(x_row[:, None] + (2 * H + offs_h)[None, :], mask=m2, other=0.0).to(tl.float32)
    gr = sigmoid(x_r + acc_r)
    gz = sigmoid(x_z + acc_z)
    gn = tanh(x_n + gr * acc_n)
    if SAVE:
        s_row = saved_ptr + (t * B + rows)[:, None] * (4 * H) + offs_h[None, :]
        tl.store(s_row + 0 * H, tl.where(m2, gr, 0.0), mask=keep)
        tl.store(s_row + 1 * H, tl.where(m2, gz, 0.0), mask=keep)
        tl.store(s_row + 2 * H, tl.where(m2, gn, 0.0), mask=keep)
        tl.store(s_row + 3 * H, tl.where(m2, acc_n, 0.0), mask=keep)
    return (1.0 - gz) * gn + gz * h_old


@triton.jit
def gru_gate_grads(dh, saved_ptr, h_prev_ptr, dxw_ptr, dghn_ptr, t, rows, offs_h, B, H, m2, keep):
    """Step t's gate gradients of a (rows x units) block, from dh, the total gradient of h_t:
    stores the r, z, n pre-activation gradients (dxw) and dghn (that of gh_n = h W_hn^T + b_hn);
    returns z, for the direct term dh_t * z of dh_{t-1}. Shared with kernels/recurrent/gru_persistent.py."""
    seq = (t * B + rows)[:, None] * H + offs_h[None, :]
    s_row = (t * B + rows)[:, None] * (4 * H) + offs_h[None, :]
    gr = tl.load(saved_ptr + s_row + 0 * H, mask=m2, other=0.0)
    gz = tl.load(saved_ptr + s_row + 1 * H, mask=m2, other=0.0)
    gn = tl.load(saved_ptr + s_row + 2 * H, mask=m2, other=0.0)
    ghn = tl.load(saved_ptr + s_row + 3 * H, mask=m2, other=0.0)
    h_prev = tl.load(h_prev_ptr + seq, mask=m2, other=0.0).to(tl.float32)
    dn_pre = dh * (1.0 - gz) * (1.0 - gn * gn)
    dz_pre = dh * (h_prev - gn) * gz * (1.0 - gz)
    dr_pre = dn_pre * ghn * gr * (1.0 - gr)
    x_row = (t * B + rows)[:, None] * (3 * H) + offs_h[None, :]
    tl.store(dxw_ptr + x_row + 0 * H, tl.where(m2, dr_pre, 0.0), mask=keep)
    tl.store(dxw_ptr + x_row + 1 * H, tl.where(m2, dz_pre, 0.0), mask=keep)
    tl.store(dxw_ptr + x_row + 2 * H, tl.where(m2, dn_pre, 0.0), mask=keep)
    tl.store(dghn_ptr + seq, tl.where(m2, dn_pre * gr, 0.0), mask=keep)
    return gz


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
    dy_ptr += d * T * B * H
    saved_ptr += d * T * B * 4 * H
    h_prev_ptr += d * T * B * H
    w_hh_ptr += d * 3 * H * H
    dxw_ptr += d * T * B * 3 * H
    dghn_ptr += d * T * B * H
    dh_state_ptr += d * 2 * B * H
    ar_h = tl.arange(0, BLOCK_H)
    ar_p = tl.arange(0, BLOCK_P)

    if RESIDENT:
        # W_g blocks (H_out, H_in), the transpose of the forward's view, for dgh_g W_g.
        w_r = load_tile(w_hh_ptr + 0 * H * H, ar_h, ar_p, H, 1, H, H)
        w_z = load_tile(w_hh_ptr + 1 * H * H, ar_h, ar_p, H, 1, H, H)
        w_n = load_tile(w_hh_ptr + 2 * H * H, ar_h, ar_p, H, 1, H, H)

    for i in range(T):
        s = T - 1 - i
        t, active = step_time_index(s, lengths, rev)
        live = mask_b & active
        src = dh_state_ptr + (i % 2) * B * H
        dst = dh_state_ptr + ((i + 1) % 2) * B * H
        for n0 in range(0, H, BLOCK_H):
            offs_h = n0 + ar_h
            mask_h = offs_h < H
            keep = mask_b[:, None] & mask_h[None, :]
            m2 = live[:, None] & mask_h[None, :]
            seq = (t * B + rows)[:, None] * H + offs_h[None, :]
            # Total gradient of h_t = output gradient + gradient carried from step t+1.
            dh = tl.load(dy_ptr + seq, mask=m2, other=0.0).to(tl.float32) \
                + tl.load(src + rows[:, None] * H + offs_h[None, :], mask=m2, other=0.0)
            gru_gate_grads(dh, saved_ptr, h_prev_ptr, dxw_ptr, dghn_ptr, t, rows, offs_h, B, H, m2, keep)
        tl.debug_barrier()  # every gate gradient of step t is written before it is contracted
        # dh_{t-1} = dh_t * z + (dr_pre, dz_pre, dn_pre * r) W_hh, one column block at a time.
        for p0 in range(0, H, BLOCK_P):
            offs_p = p0 + ar_p
            mask_p = offs_p < H
            acc = tl.zeros([BLOCK_B, BLOCK_P], dtype=tl.float32)
            for k0 in range(0, H, BLOCK_H):
                offs_k = k0 + ar_h
                mask_k = offs_k < H
                dmask = mask_b[:, None] & mask_k[None, :]
                dx_row = dxw_ptr + (t * B + rows)[:, None] * (3 * H) + offs_k[None, :]
                if not RESIDENT:
                    w_r = load_tile(w_hh_ptr + 0 * H * H, offs_k, offs_p, H, 1, H, H)
                    w_z = load_tile(w_hh_ptr + 1 * H * H, offs_k, offs_p, H, 1, H, H)
                    w_n = load_tile(w_hh_ptr + 2 * H * H, offs_k, offs_p, H, 1, H, H)
                acc += mma(tl.load(dx_row + 0 * H, mask=dmask, other=0.0), w_r, DOT_FP32, INPUT_PRECISION)
                acc += mma(tl.load(dx_row + 1 * H, mask=dmask, other=0.0), w_z, DOT_FP32, INPUT_PRECISION)
                acc += mma(tl.load(dghn_ptr + (t * B + rows)[:, None] * H + offs_k[None, :],
                                   mask=dmask, other=0.0), w_n, DOT_FP32, INPUT_PRECISION)
            keep = mask_b[:, None] & mask_p[None, :]
            m2 = live[:, None] & mask_p[None, :]
            seq = (t * B + rows)[:, None] * H + offs_p[None, :]
            # The direct path h_{t-1} -> h_t through z * h_{t-1}.
            carry = tl.load(src + rows[:, None] * H + offs_p[None, :], mask=keep, other=0.0)
            dh = tl.load(dy_ptr + seq, mask=m2, other=0.0).to(tl.float32) + carry
            gz = tl.load(saved_ptr + (t * B + rows)[:, None] * (4 * H) + 1 * H + offs_p[None, :],
                         mask=m2, other=0.0)
            tl.store(dst + rows[:, None] * H + offs_p[None, :], tl.where(m2, acc + dh * gz, carry), mask=keep)
        tl.debug_barrier()  # dh_{t-1} is complete before the next step reads it
