"""Index arithmetic shared by the convolution kernels (channels-last, "same" padding PAD = K//2).

A conv reads, for output position o and kernel tap k (per spatial dimension), the position
q = o * STRIDE + k - PAD of the padded, optionally 2x-upsampled input of length L = S or 2S.
Zero padding: valid iff 0 <= q < L. Reflection: q < 0 -> -q, q >= L -> 2(L-1) - q (always
valid; the launcher checks PAD < L as torch does). Upsampling: the stored input index is q // 2.
The upsampled tensor is never materialised. target_index is the inverse (for the data gradient).
pixel_tile and channel_block are the programs' tiles of positions and channels.
"""

import triton
import triton.language as tl


@triton.jit
def pixel_tile(tile, ROWS, COLS, BLOCK: tl.constexpr):
    """Positions tile * BLOCK + [0, BLOCK) of a ROWS x COLS image (row-major): (offsets, mask,
    row, column)."""
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < ROWS * COLS, offs // COLS, offs % COLS


@triton.jit
def channel_block(block, C, BLOCK: tl.constexpr):
    """Channels block * BLOCK + [0, BLOCK) of C: (offsets, mask)."""
    offs = block * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < C


@triton.jit
def source_index(o, k, S, STRIDE: tl.constexpr, PAD: tl.constexpr, UPSAMPLE: tl.constexpr,
                 REFLECT: tl.constexpr):
    """Stored input index read by output position(s) `o` at tap `k`, and its validity mask."""
    if UPSAMPLE:
        L = 2 * S
    else:
        L = S
    q = o * STRIDE + k - PAD
    if REFLECT:
        q = tl.where(q < 0, -q, q)
        q = tl.where(q >= L, 2 * (L - 1) - q, q)
        valid = (q >= 0) & (q < L)
    else:
        valid = (q >= 0) & (q < L)
    if UPSAMPLE:
        q = q // 2
    return tl.where(valid, q, 0), valid


@triton.jit
def target_index(i, k, S, O, cand, STRIDE: tl.constexpr, PAD: tl.constexpr, UPSAMPLE: tl.constexpr,
                 REFLECT: tl.constexpr):
    """Output position(s) o that read stored index(es) `i` at tap `k` through candidate `cand`,
    and the validity mask: the inverse of source_index, one preimage per candidate.

    Candidates 0 .. (1 + UPSAMPLE) * (1 + 2 * REFLECT) - 1. With UPSAMPLE, cand % 2 picks the
    upsampled position u = 2i + cand % 2 (else u = i) and the rest of cand the padded position q
    that lands on u: 0 -> u itself; with REFLECT 1 -> the left mirror -u (exists if
    0 < u <= PAD), 2 -> the right mirror 2(L-1) - u (exists if u < L-1 and it lies within PAD
    of the edge). Then o = (q + PAD - k) / STRIDE must be an integer in [0, O).
    """
    if UPSAMPLE:
        L = 2 * S
        u = 2 * i + cand % 2
        mirror = cand // 2
    else:
        L = S
        u = i
        mirror = cand
    if REFLECT:
        right = 2 * (L - 1) - u
        q = tl.where(mirror == 1, -u, tl.where(mirror == 2, right, u))
        valid = tl.where(mirror == 1, (u > 0) & (u <= PAD),
                         tl.where(mirror == 2, (u < L - 1) & (right <= L - 1 + PAD), u >= 0))
    else:
        q = u
        valid = u >= 0
    t = q + PAD - k
    valid = valid & (t >= 0)
    t = tl.where(valid, t, 0)  # no negative division or remainder below
    if STRIDE > 1:
        valid = valid & (t % STRIDE == 0)
    o = t // STRIDE
    valid = valid & (o < O)
    return tl.where(valid, o, 0), valid
