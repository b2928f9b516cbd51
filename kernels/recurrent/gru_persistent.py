"""Persistent multi-program GRU forward and backward: the gate columns of one layer are split
across co-resident programs, each holding its slice of W_hh on chip for the whole sequence.

The design of kernels/recurrent/lstm_persistent.py (read its docstring first) with torch's GRU math of
kernels/recurrent/gru.py: grid (column blocks, directions, groups of batch tiles); program j owns hidden
units [j*BLOCK_H, (j+1)*BLOCK_H) of the three gates r, z, n: W_hh rows {g*H + those units}
(3 * BLOCK_H x H), loaded once. Per step and batch tile of its group it reads the tile's whole
h_{t-1} from L2, computes its columns of gh = h_{t-1} W_hh^T + b_hh and of h_t and writes them;
then it waits at the grid barrier of its (direction, group) (`_group_barrier` of
kernels/recurrent/steps.py).

GRID_SYNC=False runs steps [step_begin, step_end) without the barrier (one launch per step
under the interpreter); the backward's PHASES selects one half of a step for the same purpose.
The saved tensor (r, z, n, gh_n) and the backward's outputs (dxw, dghn, dh_0) have the layouts
of kernels/recurrent/gru.py, so the two modes' tensors are interchangeable.
"""

import triton
import triton.language as tl

from recgen.kernels.recurrent.gru import (biased_zeros, gate_bias, gru_bwd_blocks, gru_fwd_blocks, gru_gate_grads,
                                          gru_step)
from recgen.kernels.recurrent.steps import (gate_tiles, own_columns, persistent_backward, persistent_forward,
                                            persistent_group, resident_tiles, tile_offsets)


@triton.jit
def gru_held_inputs(cell, x_row, offs_h, mask_h, live_mask, H, G: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """INIT of the persistent GRU forward: the b_hh columns it loaded once (gate_bias)."""
    b, saved_ptr = cell
    return biased_zeros(b, G, HAS_BIAS, BLOCK_B, BLOCK_H)


@triton.jit
def gru_direct_grads(cell, dm, carry_base, carry_off, dst, t, t_prev, has_prev, rows, offs_h, B, H, P, live_mask,
                     in_bounds, HAS_PROJ: tl.constexpr, RELU: tl.constexpr):
    """GRADS of the persistent GRU backward: gru_gate_grads of dh_t, and the direct path h_{t-1}
    -> h_t through z * h_{t-1} into this program's columns of dh_{t-1} (phase 2 adds the rest)."""
    dy_ptr, saved_ptr, h_prev_ptr, dxw_ptr, dghn_ptr = cell
    # Total gradient of h_t = output gradient + gradient carried from step t+1.
    carry = tl.load(carry_base + carry_off, mask=in_bounds, other=0.0)
    dh = tl.load(dy_ptr + tile_offsets(t * B + rows, offs_h, H), mask=live_mask, other=0.0).to(tl.float32) \
        + tl.where(live_mask, carry, 0.0)
    gz = gru_gate_grads(dh, saved_ptr, h_prev_ptr, dxw_ptr, dghn_ptr, t, rows, offs_h, B, H, live_mask, in_bounds)
    tl.store(dst + carry_off, tl.where(live_mask, dh * gz, carry), mask=in_bounds)


@triton.jit
def _gru_fwd_persistent_kernel(
    xw_ptr,       # (T, B, D*3H) input projection x W_ih^T + b_ih, last dim contiguous
    w_hh_ptr,     # (D, 3H, H) recurrent weights, contiguous
    b_hh_ptr,     # (D, 3H) recurrent bias (HAS_BIAS)
    lengths_ptr,  # (B,) int32 valid steps per row (HAS_LENGTHS)
    y_ptr,        # (T, B, D*H) out: hidden states, zero at padding, last dim contiguous
    saved_ptr,    # (D, T, B, 4H) float32 out (SAVE): r, z, n and gh_n = h W_hn^T + b_hn, zero at padding
    h_state_ptr,  # (D, 2, B, H) in/out, the weights' dtype: h exchanged between programs, slot 0 holds h0
    h_carry_ptr,  # (D, B, H) float32 in/out: holds h0, ends with h_n
    counter_ptr,  # (D * groups + 1,) int32 zeros: a barrier counter per program group, then the error flag
    T, B, H,
    stride_xt, stride_xb, stride_yt, stride_yb,
    first_reverse, step_begin, step_end,
    spin_limit,   # polls one barrier wait may take before it gives up (GRID_SYNC)
    HAS_LENGTHS: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE: tl.constexpr, GRID_SYNC: tl.constexpr,
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Per step, program j computes gh_g[:, its units] = h_{t-1} W_g[its units]^T + b_hg for
    g = r, z, n from the whole h_{t-1} (read from L2) and its W_g^T slices held on chip, then
    r, z, n and h_t of its units (z * h_{t-1} from its own float32 columns of h, kept on chip);
    one barrier per step makes h_t whole before any program reads it. h_t is exchanged in the
    weights' dtype (as kernels/recurrent/lstm_persistent.py explains)."""
    col0, d, rev, n_cols, group = persistent_group(first_reverse, BLOCK_H)
    xw_ptr, y_ptr, w_hh_ptr, b_hh_ptr, saved_ptr, h_state_ptr = gru_fwd_blocks(
        d, T, B, H, xw_ptr, y_ptr, w_hh_ptr, b_hh_ptr, saved_ptr, h_state_ptr)
    h_carry_ptr += d * B * H

    offs_h, mask_h, ar_p, mask_p = own_columns(col0, H, BLOCK_H, BLOCK_P)
    # This program's slice of W_g^T (H_in x BLOCK_H) per gate and of b_hh, held for the whole sequence.
    w = gate_tiles(w_hh_ptr, 3, H, H, ar_p, offs_h, 1, H, H, H)
    b = gate_bias(b_hh_ptr, 3, H, offs_h, mask_h, HAS_BIAS)
    persistent_forward(gru_held_inputs, gru_step, (b, saved_ptr), w, xw_ptr, y_ptr,
                       h_state_ptr, h_carry_ptr, counter_ptr, lengths_ptr, rev, group, n_cols, offs_h, mask_h, ar_p,
                       mask_p, T, B, H, stride_xt, stride_xb, stride_yt, stride_yb, step_begin, step_end, spin_limit,
                       HAS_LENGTHS, GRID_SYNC, DOT_FP32, INPUT_PRECISION, BLOCK_B, BLOCK_H,
                       G=3, HAS_BIAS=HAS_BIAS, RELU=False, SAVE=SAVE)


@triton.jit
def _gru_bwd_persistent_kernel(
    dy_ptr,       # (D, T, B, H) gradient of the outputs, contiguous
    saved_ptr,    # (D, T, B, 4H) float32 r, z, n, gh_n from the forward
    h_prev_ptr,   # (D, T, B, H) h_{t-1} of each step in the direction of travel, contiguous
    w_hh_ptr,     # (D, 3H, H) recurrent weights, contiguous
    lengths_ptr,  # (B,) int32 valid steps per row (HAS_LENGTHS)
    dxw_ptr,      # (D, T, B, 3H) float32 out: gradient of xw (dr_pre, dz_pre, dn_pre), zero at padding
    dghn_ptr,     # (D, T, B, H) float32 out: gradient of gh_n (dn_pre * r), zero at padding
    dh_state_ptr, # (D, 2, B, H) float32 in/out: slot 0 holds dh_n; slot T % 2 ends with dh_0
    counter_ptr,  # (D * groups + 1,) int32 zeros: a barrier counter per program group, then the error flag
    T, B, H,
    first_reverse, step_begin, step_end,
    spin_limit,   # polls one barrier wait may take before it gives up (GRID_SYNC)
    HAS_LENGTHS: tl.constexpr, PHASES: tl.constexpr, GRID_SYNC: tl.constexpr,
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Back-propagation through time split like the forward: program j owns hidden units
    [j*BLOCK_H, (j+1)*BLOCK_H). dh_{t-1} = dh_t * z + (dr_pre, dz_pre, dghn) W_hh, where the
    first term is elementwise (own units only) and the second needs every unit's gradients.
    Per step (reverse order), phase 1 takes its units' total dh_t = dy_t + carry (its own
    dh_state columns), writes their gradients (dxw's r, z, n slots and dghn) and the direct
    term dh_t * z into its columns of dh_{t-1}; a grid barrier; phase 2 contracts the whole
    (dr_pre, dz_pre, dghn) row of step t (B x 3H, from L2) with its slices W_g[:, its units]
    (held on chip) and adds the result to its columns of dh_{t-1}. Every dh_state column is
    written and read by the one program that owns it, and each step writes its own rows of dxw
    and dghn (never overwritten later), so the barrier before phase 2 is the only cross-program
    dependency: one per step (plus a program-local debug_barrier after phase 2, see there).
    PHASES: 1 or 2 runs only that phase (one launch per phase and step, under the
    interpreter), 3 both with the barrier."""
    col0, d, rev, n_cols, group = persistent_group(first_reverse, BLOCK_H)
    dy_ptr, saved_ptr, h_prev_ptr, w_hh_ptr, dxw_ptr, dghn_ptr, dh_state_ptr = gru_bwd_blocks(
        d, T, B, H, dy_ptr, saved_ptr, h_prev_ptr, w_hh_ptr, dxw_ptr, dghn_ptr, dh_state_ptr)

    offs_h, mask_h, ar_k, mask_k = own_columns(col0, H, BLOCK_H, BLOCK_P)
    # W_g[:, own units] (H x BLOCK_H) per gate: dh_{t-1}[:, own] += sum_g dgh_g W_g[:, own].
    w = resident_tiles(w_hh_ptr, 3, H, H, ar_k, offs_h, H, 1, H, H, PHASES != 1)
    persistent_backward(gru_direct_grads, (dy_ptr, saved_ptr, h_prev_ptr, dxw_ptr, dghn_ptr),
                        (dxw_ptr, dxw_ptr, dghn_ptr), (3 * H, 3 * H, H), (0, H, 0), w, dh_state_ptr, counter_ptr,
                        lengths_ptr, rev, group, n_cols, offs_h, mask_h, ar_k, mask_k, T, B, H, step_begin, step_end,
                        spin_limit, HAS_LENGTHS, PHASES, GRID_SYNC, DOT_FP32, INPUT_PRECISION, BLOCK_B, BLOCK_H,
                        G=3, RELU=False, DIRECT=True)
