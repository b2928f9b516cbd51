"""Kernel launching shared by every launcher: launch counts (so tests can prove the Triton
path ran) and the dot precision switches."""

from __future__ import annotations

import contextlib
from collections import Counter

import torch

from recgen.backend import interpreting
from recgen.ops.library import traceable

LAUNCH_COUNTS: Counter = Counter()
# Outputs are NaN-poisoned under the interpreter and when tests switch this on (on the GPU it
# costs a memset, so it is off by default), so an element a kernel forgets to write shows up.
POISON = {"on": False}


# The kernels' activation codes (constexpr IN_ACT / OUT_ACT / ACT), kernels/math.py:activation.
ACT_CODES = {"none": 0, "relu": 1, "leaky_relu": 2}


def new_output(shape, dtype, device) -> torch.Tensor:
    """An output buffer the kernel must fill completely (NaN-poisoned in tests)."""
    return poisoned(torch.empty(shape, dtype=dtype, device=device))


def poisoned(out: torch.Tensor) -> torch.Tensor:
    """Fill a freshly allocated kernel output with NaN when poisoning is on; returns it."""
    if interpreting() or POISON["on"]:
        out.fill_(float("nan"))
    return out


@contextlib.contextmanager
def overriding(state: dict, **updates):
    """Set entries of a module-level override dict (forced modes and tile sizes, used by tests
    and benchmarks) for the duration of a with block, then restore them."""
    saved = dict(state)
    state.update(updates)
    try:
        yield
    finally:
        state.clear()
        state.update(saved)


def check_power_of_two(name: str, value, minimum: int = 1) -> None:
    """Tile sizes are constexpr powers of two; tl.dot operands need at least 16."""
    if value is not None and (value < minimum or value & (value - 1)):
        raise ValueError(f"{name} must be a power of two >= {minimum}, got {value}")


def launch(name: str, kernel, grid, **kwargs) -> None:
    """Launch `kernel[grid](**kwargs)` and count it under `name`. An empty grid (an empty
    batch: nothing to compute, as torch returns empty outputs) launches nothing."""
    if 0 in grid:
        return
    LAUNCH_COUNTS[name] += 1
    traceable(kernel)[grid](**kwargs)


def dot_flags(dtype: torch.dtype) -> dict:
    """DOT_FP32 and INPUT_PRECISION for tl.dot on operands of `dtype`.

    Under the interpreter bf16/fp16 dots are wrong, so operands are upcast. TF32 is used for
    float32 only when torch itself allows it for matmuls.
    """
    fp32 = dtype == torch.float32
    tf32 = fp32 and torch.backends.cuda.matmul.allow_tf32 and not interpreting()
    return {"DOT_FP32": interpreting() or fp32, "INPUT_PRECISION": "tf32" if tf32 else "ieee"}

