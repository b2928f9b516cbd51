"""Interpreter-safe elementwise and dot helpers shared by every kernel (libdevice tanh is
unavailable under TRITON_INTERPRET=1, so tanh is built from sigmoid). The recurrences' step
helpers (rows, steps, state, barriers) are in kernels/recurrent/steps.py."""

import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    return tl.sigmoid(x)


@triton.jit
def tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def sigmoid_grad(grad, y):
    """grad * sigmoid'(x) from y = sigmoid(x): grad * y * (1 - y), in that order."""
    return grad * y * (1.0 - y)


@triton.jit
def tanh_grad(grad, y):
    """grad * tanh'(x) from y = tanh(x): grad * (1 - y^2)."""
    return grad * (1.0 - y * y)


@triton.jit
def mma(a, b, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """a @ b with float32 accumulation. DOT_FP32 upcasts both operands (the interpreter's
    bf16/fp16 dot is wrong); otherwise `a` is cast to the weight dtype, as cuDNN does."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=INPUT_PRECISION)
    else:
        return tl.dot(a.to(b.dtype), b, input_precision=INPUT_PRECISION)


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
