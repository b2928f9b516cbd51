"""The dense layer, act(x @ W^T + bias + residual), on the implementation the backend picks for its
data (recgen.backend): the fused Triton kernels (torch.ops.recgen.linear_act), torch's own ops
(F.linear and torch's activation, what nn.Linear followed by nn.ReLU / LeakyReLU / Tanh / Sigmoid
computes), or the pure-PyTorch reference (recgen.reference.dense)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recgen.backend import implementation, record
from recgen.reference import dense as reference_dense


def torch_linear_act(x, weight, bias=None, activation="none", negative_slope=0.01, residual=None):
    """The layer as torch's own ops compute it: F.linear, the residual add, torch's activation."""
    z = F.linear(x, weight, bias)
    if residual is not None:
        z = z + residual
    return reference_dense.apply_activation(z, "none" if activation is None else activation, negative_slope)


def _degenerate(x, weight) -> bool:
    """Empty rows, input or output features: torch's op gives exactly torch's empty result (or a
    bias broadcast, for zero input features) and nothing is launched."""
    return (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and weight.dim() == 2
            and x.dim() >= 1 and 0 in (x.numel(), weight.shape[0], weight.shape[1]))


def linear_act(x, weight, bias=None, activation="none", negative_slope=0.01, residual=None):
    """out = act(x @ weight^T + bias + residual) (semantics: recgen.reference.dense.linear_act).

    x: (..., I) with any leading dimensions; weight: (O, I); bias: (O,) or None; residual:
    (..., O) or None, added before the activation; activation: 'none' (or None), 'relu',
    'leaky_relu' (negative_slope), 'tanh' or 'sigmoid'. Returns (..., O) in x's dtype.
    Differentiable in every tensor (twice, too: create_graph=True).

    >>> out = recgen.functional.linear_act(torch.randn(8, 20, 64), w, b, activation="tanh")
    """
    if not isinstance(x, torch.Tensor):  # F.linear's words
        raise TypeError(f"linear(): argument 'input' (position 1) must be Tensor, not {type(x).__name__}")
    impl = implementation(x)
    if impl == "reference":
        record(impl)
        return reference_dense.linear_act(x, weight, bias, activation, negative_slope, residual)
    if impl == "torch" or _degenerate(x, weight):
        record("torch")
        return torch_linear_act(x, weight, bias, activation, negative_slope, residual)
    record(impl)
    return _kernel_linear_act(x, weight, bias, activation, negative_slope, residual)


def _kernel_linear_act(x, weight, bias=None, activation="none", negative_slope=0.01, residual=None):
    """linear_act on the Triton path, the implementation already chosen."""
    from recgen.ops.dense.linear import checked_linear_act  # registers torch.ops.recgen.linear_act

    return checked_linear_act(x, weight, bias, residual, activation, negative_slope)
