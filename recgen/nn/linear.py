"""Drop-in torch.nn.Linear with a fused activation: act(x @ W^T + b) in one Triton launch (the
GEMM, bias and activation together; the backward in two). A subclass of torch.nn.Linear: same
constructor (plus `activation` and `negative_slope`), parameters, init and state_dict keys.
recgen.convert fuses an nn.Linear followed by nn.ReLU / LeakyReLU / Tanh / Sigmoid inside an
nn.Sequential into one of these, sharing its Parameters.

Where the backend picks torch's own op (`auto` off the GPU, or `torch`), forward is
nn.Linear's followed by torch's activation. Under torch.autocast the layer runs as torch's
linear does (on autocast's lower-precision list on CUDA and CPU): input, weight and bias cast
to the autocast dtype, the output in it, gradients reaching the float32 parameters in float32.
"""

from __future__ import annotations

import math

import torch

from recgen import functional
from recgen.backend import check_kernel_dtype, implementation, record
from recgen.functional.dense import _degenerate, torch_linear_act
from recgen.nn._checks import AUTOCAST_ELIGIBLE, autocast_off, input_autocast_dtype
from recgen.reference import dense as reference_dense

ACTIVATIONS = (None, "relu", "leaky_relu", "tanh", "sigmoid")
# torch's names of dtypes in its two dtype-mismatch messages (addmm's with a bias, mm's without).
_SCALAR_NAMES = {torch.float64: ("Double", "double"), torch.float32: ("Float", "float"),
                 torch.float16: ("Half", "c10::Half"), torch.bfloat16: ("BFloat16", "c10::BFloat16"),
                 torch.int64: ("Long", "long int"), torch.int32: ("Int", "int")}


def _dtype_words(input_dtype, weight_dtype, has_bias: bool) -> str:
    """torch's words for an input whose dtype is not the weight's (addmm's, or mm's without a bias)."""
    names = [_SCALAR_NAMES.get(dtype, (str(dtype),) * 2) for dtype in (input_dtype, weight_dtype)]
    if has_bias:
        return f"mat1 and mat2 must have the same dtype, but got {names[0][0]} and {names[1][0]}"
    return f"expected m1 and m2 to have the same dtype, but got: {names[0][1]} != {names[1][1]}"


class Linear(torch.nn.Linear):
    """torch.nn.Linear followed by an optional activation, fused: act(x @ W^T + b).

    activation: None (plain nn.Linear), 'relu', 'leaky_relu' (with negative_slope), 'tanh' or
    'sigmoid'. Input (..., in_features), output (..., out_features), as nn.Linear.

    >>> layer = recgen.nn.Linear(784, 64, activation="relu")
    >>> y = layer(torch.randn(32, 784))
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, activation=None,
                 negative_slope=0.01):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if activation == "none":
            activation = None
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        self.negative_slope = float(negative_slope)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.activation is not None:
            text += f", activation={self.activation!r}"
        if self.activation == "leaky_relu":
            text += f", negative_slope={self.negative_slope}"
        return text

    def _act(self) -> str:
        return self.activation or "none"

    def _check_input(self, input, cast) -> None:
        """torch's exception type and words first (what F.linear would raise), recgen's detail
        after; run before any launch. `cast`: the autocast dtype (input and weights then differ)."""
        name = "recgen.nn.Linear"
        if input.dim() == 0:
            raise RuntimeError("both arguments to linear need to be at least 1D, but they are 0D and 2D "
                               f"({name}: input must be (..., {self.in_features}), got a 0-D tensor)")
        if input.shape[-1] != self.in_features:
            rows = math.prod(input.shape[:-1])
            raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({rows}x{input.shape[-1]} and "
                               f"{self.in_features}x{self.out_features}) ({name}: input of shape "
                               f"{tuple(input.shape)} has {input.shape[-1]} features in its last dimension, "
                               f"expected in_features={self.in_features})")
        weight = self.weight
        if cast is None and input.dtype != weight.dtype:
            raise RuntimeError(_dtype_words(input.dtype, weight.dtype, self.bias is not None) +
                               f" ({name}: input dtype {input.dtype} does not match the weight dtype "
                               f"{weight.dtype}; convert the input or the module)")
        if input.device != weight.device:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"{input.device} and {weight.device}! ({name}: the input is on {input.device}, "
                               f"the parameters on {weight.device}; move the module with .to({input.device}))")

    def forward(self, input):
        if not isinstance(input, torch.Tensor):  # F.linear's words
            raise TypeError(f"linear(): argument 'input' (position 1) must be Tensor, not {type(input).__name__}"
                            f" (recgen.nn.Linear: input must be a Tensor)")
        impl = implementation(input)
        if impl == "torch":
            record(impl, self)
            return torch_linear_act(input, self.weight, self.bias, self._act(), self.negative_slope)
        cast = input_autocast_dtype(input)
        if cast is not None and self.weight.dtype not in AUTOCAST_ELIGIBLE:
            cast = None
        self._check_input(input, cast)
        x, weight, bias = input, self.weight, self.bias
        if cast is not None:  # as torch's linear under autocast
            x, weight = x.to(cast), weight.to(cast)
            bias = None if bias is None else bias.to(cast)
        if impl == "reference":
            record(impl, self)
            with autocast_off(x.device.type):
                return reference_dense.linear_act(x, weight, bias, self._act(), self.negative_slope)
        if _degenerate(x, weight):
            record("torch", self)
            with autocast_off(x.device.type):
                return torch_linear_act(x, weight, bias, self._act(), self.negative_slope)
        check_kernel_dtype(x, "recgen.nn.Linear")
        record(impl, self)
        with autocast_off(x.device.type):
            return functional.linear_act(x, weight, bias, self._act(), self.negative_slope)
