"""Interpreter-safe math helpers shared by every kernel (libdevice tanh is unavailable under
TRITON_INTERPRET=1, so tanh is built from sigmoid)."""

import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    return tl.sigmoid(x)


@triton.jit
def tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def mma(a, b, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """a @ b with float32 accumulation. DOT_FP32 upcasts both operands (the interpreter's
    bf16/fp16 dot is wrong); otherwise `a` is cast to the weight dtype, as cuDNN does."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=INPUT_PRECISION)
    else:
        return tl.dot(a.to(b.dtype), b, input_precision=INPUT_PRECISION)


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


@triton.jit
def activation(x, ACT: tl.constexpr, slope):
    """ACT 0: identity, 1: relu, 2: leaky_relu(slope), 3: tanh, 4: sigmoid, on float32 values
    (codes: recgen/ops/common/launch.py, ACT_CODES for the conv family's 0-2, DENSE_ACT_CODES)."""
    if ACT == 1:
        x = tl.where(x < 0.0, 0.0, x)  # relu(NaN) = NaN, as torch (tl.maximum would give 0)
    elif ACT == 2:
        x = tl.where(x > 0.0, x, x * slope)
    elif ACT == 3:
        x = tanh(x)
    elif ACT == 4:
        x = sigmoid(x)
    return x


@triton.jit
def activation_grad(grad, pre, ACT: tl.constexpr, slope):
    """grad * act'(pre), as torch's threshold/leaky_relu backward: relu's is zero where pre <= 0
    (a NaN pre passes grad on), leaky_relu's slope applies where not pre > 0."""
    if ACT == 1:
        grad = tl.where(pre <= 0.0, 0.0, grad)
    elif ACT == 2:
        grad = tl.where(pre > 0.0, grad, grad * slope)
    return grad


@triton.jit
def activation_grad_from_output(grad, out, ACT: tl.constexpr, slope):
    """grad * act'(z) from the activation's OUTPUT out = act(z), as torch's backward formulas
    (the pre-activation z is never kept): relu's is zero where out <= 0 (a NaN passes grad on),
    leaky_relu (slope >= 0: out has z's sign) takes the slope where not out > 0, tanh's is
    1 - out^2, sigmoid's out * (1 - out). ACT 0 passes grad unchanged."""
    if ACT == 1:
        grad = tl.where(out <= 0.0, 0.0, grad)
    elif ACT == 2:
        grad = tl.where(out > 0.0, grad, grad * slope)
    elif ACT == 3:
        grad = grad * (1.0 - out * out)
    elif ACT == 4:
        grad = grad * (out * (1.0 - out))
    return grad
