"""Elman RNN recurrence kernels (tanh or relu): one launch runs the whole time loop of one layer
and direction.

Glossary: T steps, B batch, D directions (one program per batch tile and direction), H hidden (the recurrent width equals H: there is no projection).
One gate block: h_t = act(xw_t + h_{t-1} W_hh^T), act = tanh, or relu when RELU. One program
owns BLOCK_B batch rows for all T steps; BLOCK_H tiles the output columns of a step and BLOCK_P
the contracted columns (both all of H when RESIDENT).

Same design as kernels/recurrent/lstm.py: h ping-pongs between two float32 scratch slots in global memory
(a step reads h_{t-1} while writing h_t) and a barrier closes each step. RESIDENT=True loads W_hh
once, before the time loop; RESIDENT=False streams weight tiles every step, for any H.
recgen/ops/config.py chooses between them.
"""

import triton
import triton.language as tl

from recgen.kernels.math import mma, tanh
from recgen.kernels.recurrent.steps import batch_tile, direction, load_tile, step_time_index


@triton.jit
def _rnn_fwd_kernel(
    xw_ptr,       # (T, B, D*H) input projection x W_ih^T + b_ih + b_hh, last dim contiguous
    w_hh_ptr,     # (D, H, H) recurrent weights, contiguous
    lengths_ptr,  # (B,) int32 valid steps per row (HAS_LENGTHS)
    y_ptr,        # (T, B, D*H) out: hidden states, zero at padding, last dim contiguous
    act_ptr,      # (D, T, B, H) float32 out: activations h_t, zero at padding, saved for the backward
    h_state_ptr,  # (D, 2, B, H) float32 in/out: slot 0 holds h0; slot T % 2 ends with h_n
    T, B, H,
    stride_xt, stride_xb, stride_yt, stride_yb,
    first_reverse,  # 1: direction 0 runs reversed (a lone reverse direction)
    HAS_LENGTHS: tl.constexpr, RELU: tl.constexpr, SAVE: tl.constexpr,
    RESIDENT: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # SAVE=False (inference): the float32 activations are not written.
    mask_b, rows, lengths = batch_tile(lengths_ptr, B, T, HAS_LENGTHS, BLOCK_B)
    d, rev = direction(first_reverse)
    # This program's direction: its block of every per-direction tensor.
    xw_ptr += d * H
    y_ptr += d * H
    w_hh_ptr += d * H * H
    act_ptr += d * T * B * H
    h_state_ptr += d * 2 * B * H
    ar_h = tl.arange(0, BLOCK_H)
    ar_p = tl.arange(0, BLOCK_P)

    if RESIDENT:
        # W_hh^T (P, H) held for the whole sequence.
        w = load_tile(w_hh_ptr, ar_p, ar_h, 1, H, H, H)

    for s in range(T):
        t, active = step_time_index(s, lengths, rev)
        live = mask_b & active
        src = h_state_ptr + (s % 2) * B * H
        dst = h_state_ptr + ((s + 1) % 2) * B * H
        x_row = xw_ptr + t * stride_xt + rows * stride_xb
        for n0 in range(0, H, BLOCK_H):
            offs_h = n0 + ar_h
            mask_h = offs_h < H
            keep = mask_b[:, None] & mask_h[None, :]
            m2 = live[:, None] & mask_h[None, :]
            acc = tl.load(x_row[:, None] + offs_h[None, :], mask=m2, other=0.0).to(tl.float32)
            for k0 in range(0, H, BLOCK_P):
                offs_k = k0 + ar_p
                mask_k = offs_k < H
                h_prev = tl.load(src + rows[:, None] * H + offs_k[None, :],
                                 mask=mask_b[:, None] & mask_k[None, :], other=0.0)
                if not RESIDENT:
                    w = load_tile(w_hh_ptr, offs_k, offs_h, 1, H, H, H)
                acc += mma(h_prev, w, DOT_FP32, INPUT_PRECISION)
            if RELU:
                h_new = tl.where(acc < 0.0, 0.0, acc)  # as torch: relu(NaN) = NaN (tl.maximum drops NaN)
            else:
                h_new = tanh(acc)
            if SAVE:
                seq_off = (t * B + rows)[:, None] * H + offs_h[None, :]
                tl.store(act_ptr + seq_off, tl.where(m2, h_new, 0.0), mask=keep)
            h_old = tl.load(src + rows[:, None] * H + offs_h[None, :], mask=keep, other=0.0)
            tl.store(dst + rows[:, None] * H + offs_h[None, :], tl.where(m2, h_new, h_old), mask=keep)
            tl.store(y_ptr + t[:, None] * stride_yt + rows[:, None] * stride_yb + offs_h[None, :],
                     tl.where(m2, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=keep)
        tl.debug_barrier()  # h_t is complete before step s + 1 reads it


@triton.jit
def _rnn_bwd_kernel(
    dy_ptr,       # (D, T, B, H) gradient of the outputs, contiguous
    act_ptr,      # (D, T, B, H) float32 activations h_t from the forward
    w_hh_ptr,     # (D, H, H) recurrent weights, contiguous
    lengths_ptr,  # (B,) int32 valid steps per row (HAS_LENGTHS)
    dpre_ptr,     # (D, T, B, H) float32 out: gradient of the pre-activation (= of xw), zero at padding
    dh_state_ptr, # (D, 2, B, H) float32 in/out: slot 0 holds dh_n; slot T % 2 ends with dh_0
    T, B, H,
    first_reverse,  # 1: direction 0 runs reversed (a lone reverse direction)
    HAS_LENGTHS: tl.constexpr, RELU: tl.constexpr,
    RESIDENT: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    mask_b, rows, lengths = batch_tile(lengths_ptr, B, T, HAS_LENGTHS, BLOCK_B)
    d, rev = direction(first_reverse)
    dy_ptr += d * T * B * H
    act_ptr += d * T * B * H
    w_hh_ptr += d * H * H
    dpre_ptr += d * T * B * H
    dh_state_ptr += d * 2 * B * H
    ar_h = tl.arange(0, BLOCK_H)
    ar_p = tl.arange(0, BLOCK_P)

    if RESIDENT:
        # W_hh (H, P), the transpose of the forward's view, for dh_{t-1} = dpre_t W_hh.
        w = load_tile(w_hh_ptr, ar_h, ar_p, H, 1, H, H)

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
            seq_off = (t * B + rows)[:, None] * H + offs_h[None, :]
            # Total gradient of h_t = output gradient + gradient carried from the next step.
            dh = tl.load(dy_ptr + seq_off, mask=m2, other=0.0).to(tl.float32) \
                + tl.load(src + rows[:, None] * H + offs_h[None, :], mask=m2, other=0.0)
            a = tl.load(act_ptr + seq_off, mask=m2, other=0.0)
            if RELU:
                # torch's threshold_backward on the output: zero where a <= 0, so a NaN passes dh on
                dpre = tl.where(a <= 0.0, 0.0, dh)
            else:
                dpre = dh * (1.0 - a * a)
            tl.store(dpre_ptr + seq_off, tl.where(m2, dpre, 0.0), mask=keep)
        tl.debug_barrier()  # every dpre column of step t is written before it is contracted
        for p0 in range(0, H, BLOCK_P):
            offs_p = p0 + ar_p
            mask_p = offs_p < H
            acc = tl.zeros([BLOCK_B, BLOCK_P], dtype=tl.float32)
            for k0 in range(0, H, BLOCK_H):
                offs_k = k0 + ar_h
                mask_k = offs_k < H
                dp = tl.load(dpre_ptr + (t * B + rows)[:, None] * H + offs_k[None, :],
                             mask=mask_b[:, None] & mask_k[None, :], other=0.0)
                if not RESIDENT:
                    w = load_tile(w_hh_ptr, offs_k, offs_p, H, 1, H, H)
                acc += mma(dp, w, DOT_FP32, INPUT_PRECISION)
            keep = mask_b[:, None] & mask_p[None, :]
            m2 = live[:, None] & mask_p[None, :]
            carry = tl.load(src + rows[:, None] * H + offs_p[None, :], mask=keep, other=0.0)
            tl.store(dst + rows[:, None] * H + offs_p[None, :], tl.where(m2, acc, carry), mask=keep)
        tl.debug_barrier()  # dh_{t-1} is complete before the next step reads it
