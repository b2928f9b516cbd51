"""Persistent multi-program Elman RNN (tanh or relu) forward and backward: the columns of one
layer are split across co-resident programs, each holding its slice of W_hh on chip for the
whole sequence.

The design of kernels/recurrent/lstm_persistent.py (read its docstring first) with the one-gate math of
kernels/recurrent/rnn.py, h_t = act(xw_t + h_{t-1} W_hh^T): grid (column blocks, directions, groups of
batch tiles); program j owns hidden units [j*BLOCK_H, (j+1)*BLOCK_H), i.e. W_hh rows of those
units (BLOCK_H x H), loaded once. Per step and batch tile of its group it reads the tile's whole
h_{t-1} from L2 and computes and writes its columns of h_t; then it waits at the grid barrier of
its (direction, group) (`_group_barrier` of steps.py).

GRID_SYNC=False runs steps [step_begin, step_end) without the barrier (one launch per step
under the interpreter); the backward's PHASES selects one half of a step for the same purpose.
The saved activations and the backward's outputs (dpre, dh_0) have the layouts of
kernels/recurrent/rnn.py, so the two modes' tensors are interchangeable.
"""

import triton
import triton.language as tl

from recgen.kernels.recurrent.rnn import rnn_bwd_blocks, rnn_fwd_blocks, rnn_grads, rnn_step
from recgen.kernels.recurrent.steps import (gate_tiles, input_gates, own_columns, persistent_backward,
                                            persistent_forward, persistent_group, resident_tiles)


@triton.jit
def _rnn_fwd_persistent_kernel(
    xw_ptr,       # (T, B, D*H) input projection x W_ih^T + b_ih + b_hh, last dim contiguous
    w_hh_ptr,     # (D, H, H) recurrent weights, contiguous
    lengths_ptr,  # (B,) int32 valid steps per row (HAS_LENGTHS)
    y_ptr,        # (T, B, D*H) out: hidden states, zero at padding, last dim contiguous
    act_ptr,      # (D, T, B, H) float32 out (SAVE): activations h_t, zero at padding
    h_state_ptr,  # (D, 2, B, H) in/out, the weights' dtype: h exchanged between programs, slot 0 holds h0
    h_carry_ptr,  # (D, B, H) float32 in/out: holds h0, ends with h_n
    counter_ptr,  # (D * groups + 1,) int32 zeros: a barrier counter per program group, then the error flag
    T, B, H,
    stride_xt, stride_xb, stride_yt, stride_yb,
    first_reverse, step_begin, step_end,
    spin_limit,   # polls one barrier wait may take before it gives up (GRID_SYNC)
    HAS_LENGTHS: tl.constexpr, RELU: tl.constexpr, SAVE: tl.constexpr, GRID_SYNC: tl.constexpr,
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Per step, program j computes h_t[:, its units] = act(xw_t + h_{t-1} W_hh[its units]^T)
    from the whole h_{t-1} (read from L2) and its W_hh^T slice held on chip; one barrier per
    step makes h_t whole before any program reads it. h_t is exchanged in the weights' dtype and
    each program keeps its own columns in float32 (as kernels/recurrent/lstm_persistent.py explains)."""
    col0, d, rev, n_cols, group = persistent_group(first_reverse, BLOCK_H)
    xw_ptr, y_ptr, w_hh_ptr, act_ptr, h_state_ptr = rnn_fwd_blocks(d, T, B, H, xw_ptr, y_ptr, w_hh_ptr, act_ptr,
                                                                  h_state_ptr)
    h_carry_ptr += d * B * H

    offs_h, mask_h, ar_p, mask_p = own_columns(col0, H, BLOCK_H, BLOCK_P)
    # This program's slice of W_hh^T (H_in x BLOCK_H), held for the whole sequence.
    w = gate_tiles(w_hh_ptr, 1, H, H, ar_p, offs_h, 1, H, H, H)
    persistent_forward(input_gates, rnn_step, (act_ptr,), w, xw_ptr, y_ptr, h_state_ptr, h_carry_ptr,
                       counter_ptr, lengths_ptr, rev, group, n_cols, offs_h, mask_h, ar_p, mask_p, T, B, H,
                       stride_xt, stride_xb, stride_yt, stride_yb, step_begin, step_end, spin_limit, HAS_LENGTHS,
                       GRID_SYNC, DOT_FP32, INPUT_PRECISION, BLOCK_B, BLOCK_H, G=1, HAS_BIAS=False, RELU=RELU,
                       SAVE=SAVE)


@triton.jit
def _rnn_bwd_persistent_kernel(
    dy_ptr,       # (D, T, B, H) gradient of the outputs, contiguous
    act_ptr,      # (D, T, B, H) float32 activations h_t from the forward
    w_hh_ptr,     # (D, H, H) recurrent weights, contiguous
    lengths_ptr,  # (B,) int32 valid steps per row (HAS_LENGTHS)
    dpre_ptr,     # (D, T, B, H) float32 out: gradient of the pre-activation (= of xw), zero at padding
    dh_state_ptr, # (D, 2, B, H) float32 in/out: slot 0 holds dh_n; slot T % 2 ends with dh_0
    counter_ptr,  # (D * groups + 1,) int32 zeros: a barrier counter per program group, then the error flag
    T, B, H,
    first_reverse, step_begin, step_end,
    spin_limit,   # polls one barrier wait may take before it gives up (GRID_SYNC)
    HAS_LENGTHS: tl.constexpr, RELU: tl.constexpr, PHASES: tl.constexpr, GRID_SYNC: tl.constexpr,
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Back-propagation through time split like the forward: program j owns hidden units
    [j*BLOCK_H, (j+1)*BLOCK_H). dh_{t-1} = dpre_t W_hh, dpre_t = dh_t * act'(pre_t). Per step
    (reverse order), phase 1 takes its units' total dh_t = dy_t + carry (its own dh_state
    columns) and writes their dpre_t; a grid barrier; phase 2 contracts the whole dpre_t row
    (B x H, from L2) with its slice W_hh[:, its units] (held on chip) into its columns of
    dh_{t-1}. Every dh_state column is written and read by the one program that owns it, and
    each step writes its own rows of dpre (never overwritten later), so the barrier before
    phase 2 is the only cross-program dependency: one per step (plus a program-local
    debug_barrier after phase 2, see there). PHASES: 1 or 2 runs only that phase (one launch
    per phase and step, under the interpreter), 3 both with the barrier."""
    col0, d, rev, n_cols, group = persistent_group(first_reverse, BLOCK_H)
    dy_ptr, act_ptr, w_hh_ptr, dpre_ptr, dh_state_ptr = rnn_bwd_blocks(d, T, B, H, dy_ptr, act_ptr, w_hh_ptr,
                                                                      dpre_ptr, dh_state_ptr)

    offs_h, mask_h, ar_k, mask_k = own_columns(col0, H, BLOCK_H, BLOCK_P)
    # W_hh[:, own units] (H x BLOCK_H): dh_{t-1}[:, own] = dpre_t W_hh[:, own].
    w = resident_tiles(w_hh_ptr, 1, H, H, ar_k, offs_h, H, 1, H, H, PHASES != 1)
    persistent_backward(rnn_grads, (dy_ptr, act_ptr, dpre_ptr), (dpre_ptr,), (H,), (0,), w, dh_state_ptr, counter_ptr,
                        lengths_ptr, rev, group, n_cols, offs_h, mask_h, ar_k, mask_k, T, B, H, step_begin, step_end,
                        spin_limit, HAS_LENGTHS, PHASES, GRID_SYNC, DOT_FP32, INPUT_PRECISION, BLOCK_B, BLOCK_H,
                        G=1, RELU=RELU, DIRECT=False)
