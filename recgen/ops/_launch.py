"""Kernel launching shared by every launcher: launch counts (so tests can prove the Triton
path ran) and the dot precision switches."""

from __future__ import annotations

from collections import Counter

import torch

from recgen.backend import interpreting

LAUNCH_COUNTS: Counter = Counter()


def launch(name: str, kernel, grid, **kwargs) -> None:
    """Launch `kernel[grid](**kwargs)` and count it under `name`. An empty grid (an empty
    batch: nothing to compute, as torch returns empty outputs) launches nothing."""
    if 0 in grid:
        return
    LAUNCH_COUNTS[name] += 1
    kernel[grid](**kwargs)


def dot_flags(dtype: torch.dtype) -> dict:
    """DOT_FP32 and INPUT_PRECISION for tl.dot on operands of `dtype`.

    Under the interpreter bf16/fp16 dots are wrong, so operands are upcast. TF32 is used for
    float32 only when torch itself allows it for matmuls.
    """
    fp32 = dtype == torch.float32
    tf32 = fp32 and torch.backends.cuda.matmul.allow_tf32 and not interpreting()
    return {"DOT_FP32": interpreting() or fp32, "INPUT_PRECISION": "tf32" if tf32 else "ieee"}

