"""Reference for the dense layer, in plain torch ops (float64-capable), written from its equation

    z   = x @ weight^T + bias + residual        (bias and residual optional)
    out = act(z)

with act one of ACTIVATIONS: none, relu, leaky_relu(negative_slope), tanh, sigmoid. x is
(..., I) with any leading dimensions, weight (O, I) as nn.Linear stores it, bias (O,), residual
(..., O) like the output. The product is torch.matmul, not F.linear, so that the tests compare two
implementations; the output keeps x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "relu", "leaky_relu", "tanh", "sigmoid")


def apply_activation(z: torch.Tensor, act: str, negative_slope: float = 0.01) -> torch.Tensor:
    """act(z) with torch's elementwise ops (so NaN/Inf and the gradients at the kinks are torch's)."""
    if act == "none":
        return z
    if act == "relu":
        return F.relu(z)
    if act == "leaky_relu":
        return F.leaky_relu(z, negative_slope)
    if act == "tanh":
        return torch.tanh(z)
    if act == "sigmoid":
        return torch.sigmoid(z)
    raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


def linear_act(x, weight, bias=None, activation="none", negative_slope=0.01, residual=None):
    """act(x @ weight^T + bias + residual). x: (..., I); weight: (O, I); bias: (O,) or None;
    residual: (..., O) or None. Returns (..., O) in x's dtype.

    >>> out = linear_act(torch.randn(2, 3, 4), torch.randn(5, 4), torch.randn(5), "tanh")
    """
    act = "none" if activation is None else activation
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")
    z = torch.matmul(x, weight.transpose(0, 1))
    if bias is not None:
        z = z + bias
    if residual is not None:
        z = z + residual
    return apply_activation(z, act, negative_slope).to(x.dtype)
