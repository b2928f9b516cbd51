"""Index arithmetic shared by the convolution kernels (channels-last, "same" padding PAD = K//2).

A conv reads, for output position o and kernel tap k (per spatial dimension), the position
q = o * STRIDE + k - PAD of the padded, optionally 2x-upsampled input of length L = S or 2S.
Zero padding: valid iff 0 <= q < L. Reflection: q < 0 -> -q, q >= L -> 2(L-1) - q (always
valid; the launcher checks PAD < L as torch does). Upsampling: the stored input index is q // 2.
The upsampled tensor is never materialised.
"""

import triton
import triton.language as tl


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
