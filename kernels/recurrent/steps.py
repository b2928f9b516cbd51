"""Step helpers shared by every recurrence kernel of kernels/recurrent/: the time loops of both modes
written once, and the row, state, weight and barrier helpers they are made of.

Glossary: T steps, B batch, D directions, H hidden, P recurrent width (the columns of h_{t-1} a
step contracts over: proj_size, or H), G gates of a cell (LSTM 4, GRU 3, RNN 1). Loop step s
visits time index t of each batch row (reversed rows run t = length-1-s). "rows" are int64 batch
indices; `live` marks the rows still active at this step (row < B and s < its length). Of a
(rows x columns) tile, `in_bounds` masks the elements that exist (row < B, column < N): every
store uses it, and so does every read of a state that a row past its length passes on unchanged,
so that such a row keeps its state and gets zeros at its padding; `live_mask` masks the elements
of live rows (in_bounds and the row live at this step): it guards the reads of step t's inputs
(xw, dy, saved gates, the dh carry added to dy_t) and picks, in tl.where, the step's new value
over the passed-on state or the padding zero.
Per-gate values travel as tuples of G tiles, in the cell's gate order.

The loops (forward_steps, backward_steps: one program per batch tile; persistent_forward,
persistent_backward: programs own column blocks and meet at a grid barrier) take the cell's math
as @triton.jit functions passed as constexprs, with the cell's tensors in one tuple `cell` that
only the cell's functions unpack (its flags travel as constexpr arguments: a constexpr put in a
tuple arrives as a runtime value):
  INIT(cell, x_row, offs_h, mask_h, live_mask, H, G, HAS_BIAS, BLOCK_B, BLOCK_H)  the G
      accumulators a step starts from, before the h_{t-1} W_hh^T dots (input_gates: the step's
      xw columns, which hold every bias)
  CELL(cell, acc, x_row, h_base, h_off, t, rows, offs_h, B, H, live_mask, in_bounds, HAS_PROJ, RELU,
       SAVE) -> (h_new, h_old): the step from the pre-activations, h_old the previous h of these
      columns read at h_base + h_off (with a projection, h_new is m_t and h_old is not read)
  GRADS(cell, dm, carry_base, carry_off, dst, t, t_prev, has_prev, rows, offs_h, B, H, P, live_mask,
        in_bounds, HAS_PROJ, RELU): step t's gate gradients of these columns, from dh_t = dy_t +
      the gradient carried from step t+1, read at carry_base + carry_off (the read slot of the dh
      state; with a projection, from dm, the gradient of m_t), into the tensors that the
      contraction dh_{t-1} = sum_g dgate_g W_g reads (`grads`, `widths`, `gate_offs`); dst is the
      dh state's written slot (dh_{t-1}); t_prev is the previous step's time index in the
      direction of travel (has_prev: there is one)
A (base, offset) pair keeps each address computed as the kernels always have (a row pointer plus
the columns, or a pointer plus a precomputed (rows, columns) offset tile): the compiled code, its
registers and spills, follow that form.
"""

import triton
import triton.language as tl

from recgen.kernels.math import mma

# ---- rows, steps and columns -------------------------------------------------------------------


@triton.jit
def step_time_index(s, lengths, reverse):
    """Time index each batch row reads and writes at loop step `s`, and whether the row is active.

    Row b is active for s < lengths[b]; forward it visits t = s, reversed (`reverse`, a runtime
    flag: the two directions of a layer share one launch) t = lengths[b]-1-s. Inactive rows
    point at t = s, which lies in their padding, so that over the whole loop every (t, b)
    position is written exactly once (padding gets zeros).
    """
    active = s < lengths
    t = tl.where(active & reverse, lengths - 1 - s, s + lengths * 0)
    return t.to(tl.int64), active


@triton.jit
def direction(first_reverse):
    """(d, reverse) of this program: program_id(1) picks the direction of a bidirectional layer
    (d = 1 runs reversed); a one-direction launch passes first_reverse = 1 to run reversed."""
    d = tl.program_id(1).to(tl.int64)  # int64: d * T * B * 4H passes 2**31 on long sequences
    return d, ((first_reverse + d) % 2) == 1


@triton.jit
def batch_tile(lengths_ptr, B, T, HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr):
    """The batch rows this program owns (tile program_id(0)): see tile_rows."""
    return tile_rows(tl.program_id(0), lengths_ptr, B, T, HAS_LENGTHS, BLOCK_B)


@triton.jit
def tile_rows(tile, lengths_ptr, B, T, HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr):
    """The rows of batch tile `tile`: (row mask, int64 row indices, valid steps per row)."""
    offs_b = tile * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    if HAS_LENGTHS:
        lengths = tl.load(lengths_ptr + offs_b, mask=mask_b, other=0)
    else:
        lengths = tl.zeros([BLOCK_B], dtype=tl.int32) + T
    return mask_b, offs_b.to(tl.int64), lengths


@triton.jit
def slots(slot, state_ptr, B, P):
    """The two ping-pong slots of a (2, B, P) state: read (`src`, slot % 2) and written (`dst`)."""
    return state_ptr + (slot % 2) * B * P, state_ptr + ((slot + 1) % 2) * B * P


@triton.jit
def step_rows(s, slot, lengths, rev, mask_b, state_ptr, B, P):
    """Loop step s of a one-program-per-tile kernel: each row's t, the rows still active (`live`)
    and the state's slots (slot = s forward; the backward runs s = T-1-i at slot i)."""
    t, active = step_time_index(s, lengths, rev)
    live = mask_b & active
    src, dst = slots(slot, state_ptr, B, P)
    return t, live, src, dst


@triton.jit
def column_block(n0, ar, N, mask_b, live):
    """Columns n0 + ar of N: (offsets, mask, in_bounds, live_mask) of these rows x columns (see
    tile_masks)."""
    offs = n0 + ar
    mask = offs < N
    in_bounds, live_mask = tile_masks(mask, mask_b, live)
    return offs, mask, in_bounds, live_mask


@triton.jit
def tile_masks(mask, mask_b, live):
    """(in_bounds, live_mask) of these rows x the columns of `mask`: in_bounds, row < B (mask_b)
    and column in range; live_mask, the row also `live` (active at this step)."""
    return mask_b[:, None] & mask[None, :], live[:, None] & mask[None, :]


# ---- state and outputs ---------------------------------------------------------------------------


@triton.jit
def load_rows(ptr, rows, offs, width, mask):
    """Elements [rows, offs] of a row-major array of `width` columns, zero where not `mask`."""
    return tl.load(ptr + rows[:, None] * width + offs[None, :], mask=mask, other=0.0)


@triton.jit
def store_rows(ptr, rows, offs, width, value, mask):
    """Stores `value` at [rows, offs] of a row-major array of `width` columns, where `mask`."""
    tl.store(ptr + rows[:, None] * width + offs[None, :], value, mask=mask)


@triton.jit
def load_gates(row_ptr, G: tl.constexpr, H, mask):
    """The G gate slots of a (.., G*H) array at the element pointers row_ptr (gate 0's)."""
    out = ()
    for g in tl.static_range(G):
        out = out + (tl.load(row_ptr + g * H, mask=mask, other=0.0),)
    return out


@triton.jit
def store_gates(row_ptr, values, G: tl.constexpr, H, live_mask, in_bounds):
    """Stores the G tiles `values` into the gate slots of a (.., G*H) array, zero at padding."""
    for g in tl.static_range(G):
        tl.store(row_ptr + g * H, tl.where(live_mask, values[g], 0.0), mask=in_bounds)


@triton.jit
def gate_inputs(x_row, G: tl.constexpr, H, offs_h, live_mask):
    """This step's xw columns of the G gates (x_row: each row's xw row), in float32."""
    out = ()
    for g in tl.static_range(G):
        out = out + (tl.load(x_row[:, None] + (g * H + offs_h)[None, :], mask=live_mask, other=0.0).to(tl.float32),)
    return out


@triton.jit
def input_gates(cell, x_row, offs_h, mask_h, live_mask, H, G: tl.constexpr, HAS_BIAS: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """INIT of the cells whose xw holds every bias (LSTM, RNN): the gates' xw columns."""
    return gate_inputs(x_row, G, H, offs_h, live_mask)


@triton.jit
def tile_offsets(rows, offs, width):
    """The offsets of elements [rows, offs] of a row-major array of `width` columns."""
    return rows[:, None] * width + offs[None, :]


@triton.jit
def store_y(y_ptr, t, rows, offs, stride_yt, stride_yb, h, live_mask, in_bounds):
    """h_t into the output y at (t, rows, offs): zero at padding, in y's dtype."""
    tl.store(y_ptr + t[:, None] * stride_yt + rows[:, None] * stride_yb + offs[None, :],
             tl.where(live_mask, h, 0.0).to(y_ptr.dtype.element_ty), mask=in_bounds)


@triton.jit
def emit_h(h_new, h_old, dst, y_ptr, t, rows, offs, P, stride_yt, stride_yb, live_mask, in_bounds):
    """A one-program-per-tile step's h_t: the dst slot (h_old where a row is past its length), y."""
    store_rows(dst, rows, offs, P, tl.where(live_mask, h_new, h_old), in_bounds)
    store_y(y_ptr, t, rows, offs, stride_yt, stride_yb, h_new, live_mask, in_bounds)


# ---- weights and dots ----------------------------------------------------------------------------


@triton.jit
def load_tile(ptr, offs_r, offs_c, stride_r, stride_c, n_r, n_c):
    """Tile [offs_r, offs_c] of a 2-D array of n_r x n_c elements, zero outside it. Gate block
    g of W_hh (G*H, P) is `ptr = w + g*H*P`; strides (1, P) read it transposed, (P, 1) as is."""
    mask = (offs_r[:, None] < n_r) & (offs_c[None, :] < n_c)
    return tl.load(ptr + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c, mask=mask, other=0.0)


@triton.jit
def gate_tiles(w_ptr, G: tl.constexpr, H, P, offs_r, offs_c, stride_r, stride_c, n_r, n_c):
    """load_tile of each of the G gate blocks of a stacked (G*H, P) weight (block g at w + g*H*P)."""
    out = ()
    for g in tl.static_range(G):
        out = out + (load_tile(w_ptr + g * H * P, offs_r, offs_c, stride_r, stride_c, n_r, n_c),)
    return out


@triton.jit
def resident_tiles(w_ptr, G: tl.constexpr, H, P, offs_r, offs_c, stride_r, stride_c, n_r, n_c, HELD: tl.constexpr):
    """gate_tiles held on chip for the whole sequence when HELD; () when the loop streams them."""
    out = ()
    if HELD:
        out = gate_tiles(w_ptr, G, H, P, offs_r, offs_c, stride_r, stride_c, n_r, n_c)
    return out


@triton.jit
def gate_dots(acc, a, w, G: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc[g] + a @ w[g] for each gate g (a forward step: one operand, one accumulator per gate)."""
    out = ()
    for g in tl.static_range(G):
        out = out + (acc[g] + mma(a, w[g], DOT_FP32, INPUT_PRECISION),)
    return out


@triton.jit
def sum_gate_dots(acc, grads, widths, gate_offs, rows, offs_k, mask, w, G: tl.constexpr, DOT_FP32: tl.constexpr,
                  INPUT_PRECISION: tl.constexpr, CACHE: tl.constexpr):
    """acc + sum_g a_g @ w[g], a_g = elements [rows, gate_offs[g] + offs_k] of grads[g], a row-major
    array of widths[g] columns (a backward step: one operand and one weight block per gate, one sum)."""
    for g in tl.static_range(G):
        a = tl.load(grads[g] + rows[:, None] * widths[g] + offs_k[None, :] + gate_offs[g], mask=mask, other=0.0,
                    cache_modifier=CACHE)
        acc += mma(a, w[g], DOT_FP32, INPUT_PRECISION)
    return acc


@triton.jit
def row_dots(acc, a_ptr, rows, mask_b, ar_k, K, w, w_ptr, offs_n, stride_k, stride_n, N, G: tl.constexpr,
             RESIDENT: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """gate_dots of a[rows, :K] (row-major, K columns) with the gate blocks of a weight read as
    (K, N) tiles [k, offs_n] (strides stride_k, stride_n), over K in BLOCK_K chunks: `w` holds
    them when RESIDENT, else they are streamed from w_ptr chunk by chunk."""
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + ar_k
        mask_k = offs_k < K
        a = load_rows(a_ptr, rows, offs_k, K, mask_b[:, None] & mask_k[None, :])
        if RESIDENT:
            w_k = w
        else:
            w_k = gate_tiles(w_ptr, G, N, K, offs_k, offs_n, stride_k, stride_n, K, N)
        acc = gate_dots(acc, a, w_k, G, DOT_FP32, INPUT_PRECISION)
    return acc


# ---- the time loops of the one-program-per-tile mode -----------------------------------------------


@triton.jit
def forward_steps(INIT: tl.constexpr, CELL: tl.constexpr, cell, w, xw_ptr, w_hh_ptr, y_ptr, h_state_ptr,
                  mask_b, rows, lengths, rev, ar_h, ar_p, T, B, H, P, stride_xt, stride_xb, stride_yt, stride_yb,
                  RESIDENT: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
                  G: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, SAVE: tl.constexpr,
                  HAS_PROJ: tl.constexpr, w_r, w_hr_ptr, m_ptr):
    """The forward time loop of one batch tile: per step, the gate columns one H block at a time
    (INIT, + h_{t-1} W_hh^T, CELL; h_t into the dst slot and y), then with HAS_PROJ (m_ptr holds
    m_t) h_t = m_t W_hr^T one P block at a time; a barrier closes each step. w / w_r: the
    resident tiles of W_hh^T (P, H) per gate / W_hr^T (H, P), or () when streamed."""
    for s in range(T):
        t, live, src, dst = step_rows(s, s, lengths, rev, mask_b, h_state_ptr, B, P)
        x_row = xw_ptr + t * stride_xt + rows * stride_xb
        # Gate columns, one H block at a time (a single block when RESIDENT).
        for n0 in range(0, H, BLOCK_H):
            offs_h, mask_h, in_bounds, live_mask = column_block(n0, ar_h, H, mask_b, live)
            acc = INIT(cell, x_row, offs_h, mask_h, live_mask, H, G, HAS_BIAS, BLOCK_B, BLOCK_H)
            acc = row_dots(acc, src, rows, mask_b, ar_p, P, w, w_hh_ptr, offs_h, 1, P, H, G, RESIDENT, DOT_FP32,
                           INPUT_PRECISION, BLOCK_P)
            h_new, h_old = CELL(cell, acc, x_row, src + rows[:, None] * P, offs_h[None, :], t, rows, offs_h, B, H,
                                live_mask, in_bounds, HAS_PROJ, RELU, SAVE)
            if HAS_PROJ:
                tl.store(m_ptr + tile_offsets(t * B + rows, offs_h, H), tl.where(live_mask, h_new, 0.0), mask=in_bounds)
            else:
                emit_h(h_new, h_old, dst, y_ptr, t, rows, offs_h, P, stride_yt, stride_yb, live_mask, in_bounds)
        if HAS_PROJ:
            tl.debug_barrier()  # every m_t column is written before the projection reads it
            for p0 in range(0, P, BLOCK_P):
                offs_p = p0 + ar_p
                h = row_dots((tl.zeros([BLOCK_B, BLOCK_P], dtype=tl.float32),), m_ptr, t * B + rows, mask_b, ar_h,
                             H, w_r, w_hr_ptr, offs_p, 1, H, P, 1, RESIDENT, DOT_FP32, INPUT_PRECISION, BLOCK_H)[0]
                in_bounds, live_mask = tile_masks(offs_p < P, mask_b, live)
                emit_h(h, load_rows(src, rows, offs_p, P, in_bounds), dst, y_ptr, t, rows, offs_p, P, stride_yt,
                       stride_yb, live_mask, in_bounds)
        tl.debug_barrier()  # h_t is complete before step s + 1 reads it


@triton.jit
def backward_steps(GRADS: tl.constexpr, cell, grads, widths, w, w_hh_ptr, dy_ptr, dh_state_ptr,
                   mask_b, rows, lengths, rev, ar_h, ar_p, T, B, H, P,
                   RESIDENT: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
                   G: tl.constexpr, RELU: tl.constexpr, gate_offs, DIRECT: tl.constexpr, direct,
                   HAS_PROJ: tl.constexpr, w_r, w_hr_ptr, dh_ptr):
    """Back-propagation through time of one batch tile, steps in reverse order: per step, dh_t =
    dy_t + the carry from step t+1 (with HAS_PROJ stored whole in dh_ptr first, and the cell's
    output gradient is dh_t W_hr), GRADS one H block at a time; a barrier; dh_{t-1} = sum_g
    grads_g W_g one P block at a time into the dst slot (the carry where a row is inactive);
    with DIRECT (GRU) plus dh_t * z, z at direct = (pointer, row width, column offset). w / w_r:
    the resident tiles of W_hh (H, P) per gate / W_hr (P, H), or () when streamed."""
    for i in range(T):
        s = T - 1 - i
        t, live, src, dst = step_rows(s, i, lengths, rev, mask_b, dh_state_ptr, B, P)
        t_prev = tl.where(rev, t + 1, t - 1)
        has_prev = (lengths * 0 + s) > 0  # per row, so it broadcasts into the load masks
        if HAS_PROJ:
            # Total gradient of h_t = output gradient + gradient carried from step t+1.
            for p0 in range(0, P, BLOCK_P):
                offs_p, mask_p, in_bounds, live_mask = column_block(p0, ar_p, P, mask_b, live)
                seq = tile_offsets(t * B + rows, offs_p, P)
                dh_tot = tl.load(dy_ptr + seq, mask=live_mask, other=0.0).to(tl.float32) \
                    + load_rows(src, rows, offs_p, P, live_mask)
                tl.store(dh_ptr + seq, tl.where(live_mask, dh_tot, 0.0), mask=in_bounds)
            tl.debug_barrier()
        for n0 in range(0, H, BLOCK_H):
            offs_h, mask_h, in_bounds, live_mask = column_block(n0, ar_h, H, mask_b, live)
            dm = 0.0
            if HAS_PROJ:
                dm = row_dots((tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32),), dh_ptr, t * B + rows, mask_b, ar_p,
                              P, w_r, w_hr_ptr, offs_h, H, 1, H, 1, RESIDENT, DOT_FP32, INPUT_PRECISION, BLOCK_P)[0]
            GRADS(cell, dm, src + rows[:, None] * P, offs_h[None, :], dst, t, t_prev, has_prev, rows, offs_h, B, H, P,
                  live_mask, in_bounds, HAS_PROJ, RELU)
        tl.debug_barrier()  # every gate gradient of step t is written before it is contracted
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + ar_p
            acc = tl.zeros([BLOCK_B, BLOCK_P], dtype=tl.float32)
            for k0 in range(0, H, BLOCK_H):
                offs_k = k0 + ar_h
                mask_k = offs_k < H
                if RESIDENT:
                    w_k = w
                else:
                    w_k = gate_tiles(w_hh_ptr, G, H, P, offs_k, offs_p, P, 1, H, P)
                acc = sum_gate_dots(acc, grads, widths, gate_offs, t * B + rows, offs_k,
                                    mask_b[:, None] & mask_k[None, :], w_k, G, DOT_FP32, INPUT_PRECISION, "")
            in_bounds, live_mask = tile_masks(offs_p < P, mask_b, live)
            carry = load_rows(src, rows, offs_p, P, in_bounds)
            if DIRECT:
                # The direct path h_{t-1} -> h_t through z * h_{t-1}.
                z_ptr, z_width, z_col = direct
                dh = tl.load(dy_ptr + tile_offsets(t * B + rows, offs_p, P), mask=live_mask,
                             other=0.0).to(tl.float32) + carry
                z = tl.load(z_ptr + (t * B + rows)[:, None] * z_width + z_col + offs_p[None, :], mask=live_mask,
                            other=0.0)
                acc = acc + dh * z
            store_rows(dst, rows, offs_p, P, tl.where(live_mask, acc, carry), in_bounds)
        tl.debug_barrier()  # dh_{t-1} is complete before the next step reads it


# ---- the persistent multi-program mode -------------------------------------------------------------

# A counter value no legal barrier target reaches (targets are steps x column blocks; the
# launcher streams instead where they could reach it). A program whose wait ran out raises
# every counter of the launch to it, so that every wait of the launch, now and later, ends at
# its next poll: the launch finishes quickly and the launcher raises (recgen/ops/persistent_tiles.py).
BARRIER_RELEASED = tl.constexpr(2 ** 30)


@triton.jit
def _group_barrier(counters_ptr, group, target, spin_limit):
    """Wait until `target` arrivals are counted on counter `group` (this one included), polling
    at most `spin_limit` times: far more than any legal wait, so that a grid that is not
    co-resident ends instead of hanging. counters_ptr: the launch's counters, one per
    (direction, group), then the error flag (the target of the first barrier that ran out, 0
    while none did). Returns the number of polls (the tests read it)."""
    tl.debug_barrier()  # every thread's stores of this step precede the release below
    counter_ptr = counters_ptr + group
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    polls = 1
    while (seen < target) & (polls < spin_limit):
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        polls += 1
    if seen < target:
        # Out of budget: record where (the first to run out wins), then release every group.
        n_groups = tl.num_programs(1) * tl.num_programs(2)
        tl.atomic_cas(counters_ptr + n_groups, 0, target, sem="relaxed", scope="gpu")
        for k in range(0, n_groups):
            tl.atomic_max(counters_ptr + k, BARRIER_RELEASED, sem="release", scope="gpu")
    tl.debug_barrier()  # no thread reads h_t before the acquire has seen every arrival
    return polls


@triton.jit
def persistent_group(first_reverse, BLOCK_H: tl.constexpr):
    """This program's place in a persistent grid (column block, direction, group): its first
    hidden unit, direction d (int64) and whether it runs reversed, the number of column blocks
    (programs per barrier group) and its group's counter index."""
    d = tl.program_id(1).to(tl.int64)
    rev = ((first_reverse + d) % 2) == 1
    group = d * tl.num_programs(2) + tl.program_id(2)
    return tl.program_id(0) * BLOCK_H, d, rev, tl.num_programs(0), group


@triton.jit
def tile_at_step(tile, s, rev, lengths_ptr, B, T, H, offs_h, mask_h, HAS_LENGTHS: tl.constexpr,
                 BLOCK_B: tl.constexpr):
    """Batch tile `tile` at loop step `s` of a persistent program: its row mask, int64 rows and
    valid steps, the masks of its rows x this program's columns (`in_bounds`: row < B and column
    < H; `live_mask`: also the row active at this step), their offsets in a (B, H) array, and each
    row's time index t."""
    mask_b, rows, lengths = tile_rows(tile, lengths_ptr, B, T, HAS_LENGTHS, BLOCK_B)
    in_bounds = mask_b[:, None] & mask_h[None, :]
    t, active = step_time_index(s, lengths, rev)
    live_mask = (mask_b & active)[:, None] & mask_h[None, :]
    return mask_b, rows, lengths, in_bounds, live_mask, rows[:, None] * H + offs_h[None, :], t


@triton.jit
def own_columns(col0, H, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's hidden units (offsets and mask) and the whole recurrent width (offsets and
    mask), which its dots contract over."""
    offs_h = col0 + tl.arange(0, BLOCK_H)
    ar = tl.arange(0, BLOCK_P)
    return offs_h, offs_h < H, ar, ar < H


@triton.jit
def read_exchanged_h(src, rows, mask_b, ar_p, mask_p, H):
    """The whole h_{t-1} of these rows as all programs wrote it: .cg, from L2, never a stale L1
    line of another program's columns (they change every step)."""
    return tl.load(src + rows[:, None] * H + ar_p[None, :], mask=mask_b[:, None] & mask_p[None, :], other=0.0,
                   cache_modifier=".cg")


@triton.jit
def publish_h(h_new, h_old, live_mask, in_bounds, own, h_carry_ptr, dst, y_ptr, t, rows, offs_h, stride_yt, stride_yb):
    """A forward step's h of this program's columns: the float32 carry (h_old where a row is past
    its length), its copy in the exchange dtype for the next step's dots, and y (zero there)."""
    h_carry = tl.where(live_mask, h_new, h_old)
    tl.store(h_carry_ptr + own, h_carry, mask=in_bounds)
    tl.store(dst + own, h_carry.to(dst.dtype.element_ty), mask=in_bounds)
    store_y(y_ptr, t, rows, offs_h, stride_yt, stride_yb, h_new, live_mask, in_bounds)


@triton.jit
def end_forward_step(counters_ptr, group, target, spin_limit, GRID_SYNC: tl.constexpr):
    """The grid barrier closing a step; in one-launch-per-step mode (GRID_SYNC=False) a CTA
    barrier, as the next step reads this program's columns back in other threads."""
    if GRID_SYNC:
        _group_barrier(counters_ptr, group, target, spin_limit)
    else:
        tl.debug_barrier()


@triton.jit
def persistent_forward(INIT: tl.constexpr, CELL: tl.constexpr, cell, w, xw_ptr, y_ptr, h_state_ptr, h_carry_ptr,
                       counter_ptr, lengths_ptr, rev, group, n_cols, offs_h, mask_h, ar_p, mask_p, T, B, H,
                       stride_xt, stride_xb, stride_yt, stride_yb, step_begin, step_end, spin_limit,
                       HAS_LENGTHS: tl.constexpr, GRID_SYNC: tl.constexpr, DOT_FP32: tl.constexpr,
                       INPUT_PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                       G: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, SAVE: tl.constexpr):
    """Steps [step_begin, step_end) of a persistent forward: per step and batch tile of this
    program's group, the whole h_{t-1} (from L2) times its held slices w of W_g^T, then CELL on
    its columns (h_old from its float32 carry) and publish_h; then the group's barrier."""
    for s in range(step_begin, step_end):
        src, dst = slots(s, h_state_ptr, B, H)
        for tile in range(tl.program_id(2), tl.cdiv(B, BLOCK_B), tl.num_programs(2)):
            mask_b, rows, lengths, in_bounds, live_mask, own, t = tile_at_step(
                tile, s, rev, lengths_ptr, B, T, H, offs_h, mask_h, HAS_LENGTHS, BLOCK_B)
            x_row = xw_ptr + t * stride_xt + rows * stride_xb
            h_prev = read_exchanged_h(src, rows, mask_b, ar_p, mask_p, H)
            acc = INIT(cell, x_row, offs_h, mask_h, live_mask, H, G, HAS_BIAS, BLOCK_B, BLOCK_H)
            acc = gate_dots(acc, h_prev, w, G, DOT_FP32, INPUT_PRECISION)
            h_new, h_old = CELL(cell, acc, x_row, h_carry_ptr, own, t, rows, offs_h, B, H, live_mask, in_bounds, False,
                                RELU, SAVE)
            publish_h(h_new, h_old, live_mask, in_bounds, own, h_carry_ptr, dst, y_ptr, t, rows, offs_h, stride_yt,
                      stride_yb)
        end_forward_step(counter_ptr, group, (s + 1) * n_cols, spin_limit, GRID_SYNC)


@triton.jit
def persistent_backward(GRADS: tl.constexpr, cell, grads, widths, gate_offs, w, dh_state_ptr, counter_ptr, lengths_ptr,
                        rev, group, n_cols, offs_h, mask_h, ar_k, mask_k, T, B, H, step_begin, step_end, spin_limit,
                        HAS_LENGTHS: tl.constexpr, PHASES: tl.constexpr, GRID_SYNC: tl.constexpr,
                        DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                        BLOCK_H: tl.constexpr, G: tl.constexpr, RELU: tl.constexpr, DIRECT: tl.constexpr):
    """Steps [step_begin, step_end) of a persistent backward (reverse order). Phase 1: per batch
    tile, GRADS of this program's columns (dh_t = dy_t + its own carry); the group's barrier;
    phase 2: the whole gradient rows of step t (`grads`, from L2) times its held slices w of
    W_g[:, its units] into its columns of dh_{t-1}: the carry where a row is inactive, or with
    DIRECT (GRU) added to the direct term dh_t * z that phase 1 stored there. PHASES: 1 or 2
    runs only that phase (one launch per phase and step, under the interpreter), 3 both."""
    for i in range(step_begin, step_end):
        s = T - 1 - i
        src, dst = slots(i, dh_state_ptr, B, H)
        if PHASES != 2:
            for tile in range(tl.program_id(2), tl.cdiv(B, BLOCK_B), tl.num_programs(2)):
                mask_b, rows, lengths, in_bounds, live_mask, own, t = tile_at_step(
                    tile, s, rev, lengths_ptr, B, T, H, offs_h, mask_h, HAS_LENGTHS, BLOCK_B)
                t_prev = tl.where(rev, t + 1, t - 1)
                has_prev = (lengths * 0 + s) > 0  # per row, so it broadcasts into the load masks
                GRADS(cell, 0.0, src, own, dst, t, t_prev, has_prev, rows, offs_h, B, H, H, live_mask, in_bounds, False,
                      RELU)
        if GRID_SYNC:
            _group_barrier(counter_ptr, group, (i + 1) * n_cols, spin_limit)
        if PHASES != 1:
            for tile in range(tl.program_id(2), tl.cdiv(B, BLOCK_B), tl.num_programs(2)):
                mask_b, rows, lengths, in_bounds, live_mask, own, t = tile_at_step(
                    tile, s, rev, lengths_ptr, B, T, H, offs_h, mask_h, HAS_LENGTHS, BLOCK_B)
                # .cg: the other programs' gradients of this step, from L2.
                acc = sum_gate_dots(tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32), grads, widths, gate_offs,
                                    t * B + rows, ar_k, mask_b[:, None] & mask_k[None, :], w, G, DOT_FP32,
                                    INPUT_PRECISION, ".cg")
                if DIRECT:
                    old = tl.load(dst + own, mask=in_bounds, other=0.0)
                    acc = old + acc
                else:
                    old = tl.load(src + own, mask=in_bounds, other=0.0)
                tl.store(dst + own, tl.where(live_mask, acc, old), mask=in_bounds)
            # The next step's phase 1 reads these columns back, possibly in other threads of
            # this program (the dot's layout is not the loads'): order the stores before it.
            tl.debug_barrier()
