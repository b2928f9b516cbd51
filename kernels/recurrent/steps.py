"""Step helpers shared by every recurrence kernel of kernels/recurrent/ (single-program and
persistent modes, every cell).

Glossary: T steps, B batch, D directions, H hidden, P recurrent width (the columns of h_{t-1} a
step contracts over: proj_size, or H), G gates of a cell (LSTM 4, GRU 3, RNN 1). A step s of the
time loop visits time index t of each batch row (reversed rows run t = length-1-s); "rows" are
int64 batch indices, "keep" masks the in-bounds (row, column) pairs of a tile and "m2" those of
rows still active at this step.
"""

import triton
import triton.language as tl


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
def load_tile(ptr, offs_r, offs_c, stride_r, stride_c, n_r, n_c):
    """Tile [offs_r, offs_c] of a 2-D array of n_r x n_c elements, zero outside it. Gate block
    g of W_hh (G*H, P) is `ptr = w + g*H*P`; strides (1, P) read it transposed, (P, 1) as is."""
    mask = (offs_r[:, None] < n_r) & (offs_c[None, :] < n_c)
    return tl.load(ptr + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c, mask=mask, other=0.0)


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
    valid steps, the masks of its rows x this program's columns (`keep`: in bounds, `m2`: also
    active at this step), their offsets in a (B, H) array, and each row's time index t."""
    mask_b, rows, lengths = tile_rows(tile, lengths_ptr, B, T, HAS_LENGTHS, BLOCK_B)
    keep = mask_b[:, None] & mask_h[None, :]
    t, active = step_time_index(s, lengths, rev)
    m2 = (mask_b & active)[:, None] & mask_h[None, :]
    return mask_b, rows, lengths, keep, m2, rows[:, None] * H + offs_h[None, :], t


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
def publish_h(h_new, h_old, m2, keep, own, h_carry_ptr, dst, y_ptr, t, rows, offs_h, stride_yt, stride_yb):
    """A forward step's h of this program's columns: the float32 carry (h_old where a row is past
    its length), its copy in the exchange dtype for the next step's dots, and y (zero there)."""
    h_carry = tl.where(m2, h_new, h_old)
    tl.store(h_carry_ptr + own, h_carry, mask=keep)
    tl.store(dst + own, h_carry.to(dst.dtype.element_ty), mask=keep)
    tl.store(y_ptr + t[:, None] * stride_yt + rows[:, None] * stride_yb + offs_h[None, :],
             tl.where(m2, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=keep)


@triton.jit
def end_forward_step(counters_ptr, group, target, spin_limit, GRID_SYNC: tl.constexpr):
    """The grid barrier closing a step; in one-launch-per-step mode (GRID_SYNC=False) a CTA
    barrier, as the next step reads this program's columns back in other threads."""
    if GRID_SYNC:
        _group_barrier(counters_ptr, group, target, spin_limit)
    else:
        tl.debug_barrier()
