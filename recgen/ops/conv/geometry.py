"""Argument rules and output geometry shared by the conv launchers (forward and backward)."""

from __future__ import annotations

from recgen.backend import KERNEL_DTYPES
from recgen.reference.conv import ACTIVATIONS, PADDING_MODES

DTYPES = KERNEL_DTYPES
STRIDES = (1, 2)


def check_choice(op: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{op}: unknown {name} {value!r}; expected one of {choices}")


def check_options(stride, padding_mode, in_act, out_act, op: str = "conv2d_fwd") -> None:
    """The ValueErrors of a conv's non-tensor arguments (checked before an op's schema would
    coerce them, e.g. stride=True to 1)."""
    check_choice(op, "padding_mode", padding_mode, PADDING_MODES)
    check_choice(op, "in_act", in_act, ACTIVATIONS)
    if out_act is not None:
        check_choice(op, "out_act", out_act, ACTIVATIONS)
    if isinstance(stride, bool) or stride not in STRIDES:
        raise ValueError(f"{op}: stride must be one of {STRIDES}, got {stride!r}")


def conv_out_size(S: int, K: int, stride: int, upsample: bool) -> int:
    """Output size of a 'same'-padded K x K conv over S pixels (2S when upsampled)."""
    L = 2 * S if upsample else S
    return (L + 2 * (K // 2) - K) // stride + 1
