"""Elman RNN recurrence kernels (tanh or relu): one launch runs the whole time loop of one layer
and direction.

Glossary: T steps, B batch, D directions (one program per batch tile and direction), H hidden (the recurrent width equals H: there is no projection).
One gate block: h_t = act(xw_t + h_{t-1} W_hh^T), act = tanh, or relu when RELU. One program
owns BLOCK_B batch rows for all T steps; BLOCK_H tiles the output columns of a step and BLOCK_P
the contracted columns (both all of H when RESIDENT).

Same design as kernels/recurrent/lstm.py: h ping-pongs between two float32 scratch slots in global memory
(a step reads h_{t-1} while writing h_t) and a barrier closes each step. RESIDENT=True loads W_hh
once, before the time loop; RESIDENT=False streams weight tiles every step, for any H.
recgen/ops/config.py chooses between them. The time loops are kernels/recurrent/steps.py's
forward_steps and backward_steps; this module holds the activation and its derivative
(rnn_activation, rnn_activation_grad), which kernels/recurrent/rnn_persistent.py shares.
"""

import triton
import triton.language as tl

from recgen.kernels.math import activation, activation_grad, tanh, tanh_grad
from recgen.kernels.recurrent.steps import (backward_steps, batch_tile, direction, forward_steps, input_gates,
                                            resident_tiles, tile_offsets)


@triton.jit
def rnn_fwd_blocks(d, T, B, H, xw_ptr, y_ptr, w_hh_ptr, act_ptr, h_state_ptr):
    """Direction d's block of each per-direction tensor of an RNN forward (one layout, both modes)."""
    return xw_ptr + d * H, y_ptr + d * H, w_hh_ptr + d * H * H, act_ptr + d * T * B * H, h_state_ptr + d * 2 * B * H


@triton.jit
def rnn_bwd_blocks(d, T, B, H, dy_ptr, act_ptr, w_hh_ptr, dpre_ptr, dh_state_ptr):
    """Direction d's block of each per-direction tensor of an RNN backward (one layout, both modes)."""
    return dy_ptr + d * T * B * H, act_ptr + d * T * B * H, w_hh_ptr + d * H * H, dpre_ptr + d * T * B * H, \
        dh_state_ptr + d * 2 * B * H


@triton.jit
def rnn_activation(pre, RELU: tl.constexpr):
    """h = relu(pre) (relu(NaN) = NaN, as torch) when RELU, else tanh(pre)."""
    if RELU:
        h = activation(pre, 1, 0.0)
    else:
        h = tanh(pre)
    return h


@triton.jit
def rnn_activation_grad(dh, h, RELU: tl.constexpr):
    """dh * act'(pre) from the output h = act(pre): relu's as torch's threshold_backward on the
    output (zero where h <= 0, so a NaN passes dh on), tanh's dh * (1 - h^2)."""
    if RELU:
        dpre = activation_grad(dh, h, 1, 0.0)
    else:
        dpre = tanh_grad(dh, h)
    return dpre


@triton.jit
def rnn_step(cell, acc, x_row, h_base, h_off, t, rows, offs_h, B, H, live_mask, in_bounds, HAS_PROJ: tl.constexpr,
             RELU: tl.constexpr, SAVE: tl.constexpr):
    """CELL of the RNN loops (kernels/recurrent/steps.py): h_t = act(pre), saved (SAVE) as the
    float32 activations for the backward, and h_{t-1} of these columns."""
    act_ptr = cell[0]
    h_new = rnn_activation(acc[0], RELU)
    if SAVE:
        tl.store(act_ptr + tile_offsets(t * B + rows, offs_h, H), tl.where(live_mask, h_new, 0.0), mask=in_bounds)
    return h_new, tl.load(h_base + h_off, mask=in_bounds, other=0.0)


@triton.jit
def rnn_grads(cell, dm, carry_base, carry_off, dst, t, t_prev, has_prev, rows, offs_h, B, H, P, live_mask, in_bounds,
              HAS_PROJ: tl.constexpr, RELU: tl.constexpr):
    """GRADS of the RNN loops: dpre_t = dh_t * act'(pre_t) of these columns, zero at padding."""
    dy_ptr, act_ptr, dpre_ptr = cell
    seq = tile_offsets(t * B + rows, offs_h, H)
    # Total gradient of h_t = output gradient + gradient carried from the next step.
    dh = tl.load(dy_ptr + seq, mask=live_mask, other=0.0).to(tl.float32) \
        + tl.load(carry_base + carry_off, mask=live_mask, other=0.0)
    dpre = rnn_activation_grad(dh, tl.load(act_ptr + seq, mask=live_mask, other=0.0), RELU)
    tl.store(dpre_ptr + seq, tl.where(live_mask, dpre, 0.0), mask=in_bounds)


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
    xw_ptr, y_ptr, w_hh_ptr, act_ptr, h_state_ptr = rnn_fwd_blocks(d, T, B, H, xw_ptr, y_ptr, w_hh_ptr, act_ptr,
                                                                  h_state_ptr)
    ar_h = tl.arange(0, BLOCK_H)
    ar_p = tl.arange(0, BLOCK_P)
    # W_hh^T (P, H), held for the whole sequence when RESIDENT.
    w = resident_tiles(w_hh_ptr, 1, H, H, ar_p, ar_h, 1, H, H, H, RESIDENT)
    forward_steps(input_gates, rnn_step, (act_ptr,), w, xw_ptr, w_hh_ptr, y_ptr, h_state_ptr, mask_b, rows, lengths,
                  rev, ar_h, ar_p, T, B, H, H, stride_xt, stride_xb, stride_yt, stride_yb, RESIDENT, DOT_FP32,
                  INPUT_PRECISION, BLOCK_B, BLOCK_H, BLOCK_P, G=1, HAS_BIAS=False, RELU=RELU, SAVE=SAVE,
                  HAS_PROJ=False, w_r=(), w_hr_ptr=w_hh_ptr, m_ptr=y_ptr)  # no projection: unread


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
    dy_ptr, act_ptr, w_hh_ptr, dpre_ptr, dh_state_ptr = rnn_bwd_blocks(d, T, B, H, dy_ptr, act_ptr, w_hh_ptr,
                                                                      dpre_ptr, dh_state_ptr)
    ar_h = tl.arange(0, BLOCK_H)
    ar_p = tl.arange(0, BLOCK_P)
    # W_hh (H, P), the transpose of the forward's view, for dh_{t-1} = dpre_t W_hh, held when RESIDENT.
    w = resident_tiles(w_hh_ptr, 1, H, H, ar_h, ar_p, H, 1, H, H, RESIDENT)
    backward_steps(rnn_grads, (dy_ptr, act_ptr, dpre_ptr), (dpre_ptr,), (H,), w, w_hh_ptr, dy_ptr, dh_state_ptr,
                   mask_b, rows, lengths, rev, ar_h, ar_p, T, B, H, H, RESIDENT, DOT_FP32, INPUT_PRECISION, BLOCK_B,
                   BLOCK_H, BLOCK_P, G=1, RELU=RELU, gate_offs=(0,), DIRECT=False, direct=(), HAS_PROJ=False,
                   w_r=(), w_hr_ptr=w_hh_ptr, dh_ptr=dy_ptr)  # no projection: unread
