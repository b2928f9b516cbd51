"""Persistent multi-program LSTM forward: the gate columns of one layer are split across
co-resident programs, each holding its slice of W_hh on chip for the whole sequence.

Grid: (column blocks, directions, groups). Program j owns hidden units [j*BLOCK_H, (j+1)*BLOCK_H)
of all four gates: W_hh rows {g*H + those units} (4 * BLOCK_H x P), loaded once. Group g takes
batch tiles g, g + groups, g + 2*groups, ... (one tile each when the device holds a program per
tile; fewer groups, each looping over several tiles per step, when it does not). Per step and
tile a program reads the tile's whole h_{t-1} (BLOCK_B x P, from L2), computes its gate
columns, and writes its columns of h_t; then it waits at a grid-wide barrier of its
(direction, group): an atomic counter incremented with release semantics and polled with
acquire semantics, so every program's h_t columns are visible before any program reads h_t.
The launcher guarantees the grid is co-resident (recgen/ops/persistent_tiles.py); otherwise the
barrier could never complete. So that a broken guarantee ends in an error, not a hang, each wait
polls at most `spin_limit` times; a program that runs out records it in the error flag after
the counters and releases every barrier of the launch, which then finishes with garbage
outputs, and the launcher raises.

h_t is exchanged in the weights' dtype, the operand dtype of the next step's dot (so the same
values as a float32 exchange, at half the bytes and with no conversion buffer: the compiled
kernel needs less shared memory and fewer registers, bench/kernel_resources.py). Each program
keeps its own columns of h in float32 (h_carry, for the padding rows and h_n) and of c in
global memory (L2), read and written by that program only, once per tile and step.

GRID_SYNC=False runs steps [step_begin, step_end) without the barrier: the launcher then starts
one launch per step, which is how the Triton interpreter (one program at a time) checks the
same per-step code on the CPU.

No projection (proj_size) in this mode; lengths (packed sequences) and both directions are
handled as in kernels/recurrent/lstm.py. The saved tensors have the layout of kernels/recurrent/lstm.py, so the
backward is the single-program kernel's. The step math is kernels/recurrent/lstm.py's, the loops and the barrier
kernels/recurrent/steps.py's (persistent_forward, persistent_backward, _group_barrier).
"""

import triton
import triton.language as tl

from recgen.kernels.recurrent.lstm import lstm_gate_grads, lstm_step
from recgen.kernels.recurrent.steps import (gate_tiles, input_gates, own_columns, persistent_backward,
                                            persistent_forward, persistent_group, resident_tiles)


@triton.jit
def _lstm_fwd_persistent_kernel(
    xw_ptr,       # (T, B, D*4H) input projection with both biases, last dim contiguous
    w_hh_ptr,     # (D, 4H, H) recurrent weights, contiguous
    lengths_ptr,  # (B,) int32 valid steps per row (HAS_LENGTHS)
    y_ptr,        # (T, B, D*H) out: hidden states, zero at padding, last dim contiguous
    gates_ptr,    # (D, T, B, 4H) float32 out (SAVE): activated gates
    c_ptr,        # (D, T, B, H) float32 out (SAVE): cell states
    h_state_ptr,  # (D, 2, B, H) in/out, the weights' dtype: h exchanged between programs, slot 0 holds h0
    h_carry_ptr,  # (D, B, H) float32 in/out: holds h0, ends with h_n
    c_state_ptr,  # (D, B, H) float32 in/out: holds c0, ends with c_n
    counter_ptr,  # (D * groups + 1,) int32 zeros: a barrier counter per program group, then the error flag
    T, B, H,
    stride_xt, stride_xb, stride_yt, stride_yb,
    first_reverse, step_begin, step_end,
    spin_limit,   # polls one barrier wait may take before it gives up (GRID_SYNC)
    HAS_LENGTHS: tl.constexpr, SAVE: tl.constexpr, GRID_SYNC: tl.constexpr,
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    col0, d, rev, n_cols, group = persistent_group(first_reverse, BLOCK_H)
    xw_ptr += d * 4 * H
    y_ptr += d * H
    w_hh_ptr += d * 4 * H * H
    gates_ptr += d * T * B * 4 * H
    c_ptr += d * T * B * H
    h_state_ptr += d * 2 * B * H
    h_carry_ptr += d * B * H
    c_state_ptr += d * B * H

    offs_h, mask_h, ar_p, mask_p = own_columns(col0, H, BLOCK_H, BLOCK_P)
    # This program's slice of W_g^T (H_in x BLOCK_H) per gate, held for the whole sequence.
    w = gate_tiles(w_hh_ptr, 4, H, H, ar_p, offs_h, 1, H, H, H)
    persistent_forward(input_gates, lstm_step, (c_state_ptr, gates_ptr, c_ptr), w, xw_ptr, y_ptr,
                       h_state_ptr, h_carry_ptr, counter_ptr, lengths_ptr, rev, group, n_cols, offs_h, mask_h, ar_p,
                       mask_p, T, B, H, stride_xt, stride_xb, stride_yt, stride_yb, step_begin, step_end, spin_limit,
                       HAS_LENGTHS, GRID_SYNC, DOT_FP32, INPUT_PRECISION, BLOCK_B, BLOCK_H,
                       G=4, HAS_BIAS=False, RELU=False, SAVE=SAVE)


@triton.jit
def _lstm_bwd_persistent_kernel(
    dy_ptr,       # (D, T, B, H) gradient of the outputs, contiguous
    gates_ptr,    # (D, T, B, 4H) float32 activated gates from the forward
    c_ptr,        # (D, T, B, H) float32 cell states from the forward
    c0_ptr,       # (D, B, H) float32 initial cell state
    w_hh_ptr,     # (D, 4H, H) recurrent weights, contiguous
    lengths_ptr,  # (B,) int32 valid steps per row (HAS_LENGTHS)
    dgates_ptr,   # (D, T, B, 4H) float32 out: gradient of the gate pre-activations, zero at padding
    dh_state_ptr, # (D, 2, B, H) float32 in/out: slot 0 holds dh_n; slot T % 2 ends with dh_0
    dc_state_ptr, # (D, B, H) float32 in/out: holds dc_n, ends with dc_0
    counter_ptr,  # (D * groups + 1,) int32 zeros: a barrier counter per program group, then the error flag
    T, B, H,
    first_reverse, step_begin, step_end,
    spin_limit,   # polls one barrier wait may take before it gives up (GRID_SYNC)
    HAS_LENGTHS: tl.constexpr, PHASES: tl.constexpr, GRID_SYNC: tl.constexpr,
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Back-propagation through time, split like the forward: program j owns hidden units
    [j*BLOCK_H, (j+1)*BLOCK_H). Per step (reverse order), phase 1 computes the gate gradients of
    its units from its own dh and dc carries and writes them; a grid barrier; phase 2 contracts
    the whole dgates_t row (B x 4H, from L2) with its slice W_hh[:, its units] (held on chip) into
    its units of dh_{t-1}. Phase 1 of the next step reads only this program's own carries, and
    each step writes its own dgates_t, so one barrier per step suffices. PHASES: 1 or 2 runs only
    that phase (one launch per phase and step, under the interpreter), 3 both with the barrier."""
    col0, d, rev, n_cols, group = persistent_group(first_reverse, BLOCK_H)
    dy_ptr += d * T * B * H
    gates_ptr += d * T * B * 4 * H
    c_ptr += d * T * B * H
    c0_ptr += d * B * H
    w_hh_ptr += d * 4 * H * H
    dgates_ptr += d * T * B * 4 * H
    dh_state_ptr += d * 2 * B * H
    dc_state_ptr += d * B * H

    offs_h, mask_h, ar_k, mask_k = own_columns(col0, H, BLOCK_H, BLOCK_P)
    # W_g[:, own units] (H x BLOCK_H) per gate: dh_{t-1}[:, own] = sum_g dgates_g W_g[:, own].
    w = resident_tiles(w_hh_ptr, 4, H, H, ar_k, offs_h, H, 1, H, H, PHASES != 1)
    persistent_backward(lstm_gate_grads, (dy_ptr, gates_ptr, c_ptr, c0_ptr, dgates_ptr, dc_state_ptr),
                        (dgates_ptr, dgates_ptr, dgates_ptr, dgates_ptr), (4 * H, 4 * H, 4 * H, 4 * H),
                        (0, H, 2 * H, 3 * H), w, dh_state_ptr, counter_ptr, lengths_ptr, rev, group,
                        n_cols, offs_h, mask_h, ar_k, mask_k, T, B, H, step_begin, step_end, spin_limit, HAS_LENGTHS,
                        PHASES, GRID_SYNC, DOT_FP32, INPUT_PRECISION, BLOCK_B, BLOCK_H, G=4, RELU=False, DIRECT=False)
