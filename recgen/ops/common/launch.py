"""Kernel launching shared by every launcher: launch counts (so tests can prove the Triton
path ran) and the dot precision switches."""

from __future__ import annotations

import contextlib
from collections import Counter

import torch

from recgen.backend import interpreting
from recgen.ops.common.kernel_identity import identity
from recgen.ops.common.library import kernel_for_launch

LAUNCH_COUNTS: Counter = Counter()
# Outputs are NaN-poisoned under the interpreter and when tests switch this on (on the GPU it
# costs a memset, so it is off by default), so an element a kernel forgets to write shows up.
POISON = {"on": False}


# The kernels' activation codes (constexpr IN_ACT / OUT_ACT / ACT), kernels/math.py:activation:
# the conv family's (its kernels' backward knows these three), and the dense family's.
ACT_CODES = {"none": 0, "relu": 1, "leaky_relu": 2}
DENSE_ACT_CODES = {**ACT_CODES, "tanh": 3, "sigmoid": 4}


def new_output(shape, dtype, device) -> torch.Tensor:
    """An output buffer the kernel must fill completely (NaN-poisoned in tests)."""
    return poisoned(torch.empty(shape, dtype=dtype, device=device))


def poisoned(out: torch.Tensor) -> torch.Tensor:
    """Fill a freshly allocated kernel output with NaN when poisoning is on; returns it."""
    if interpreting() or POISON["on"]:
        out.fill_(float("nan"))
    return out


@contextlib.contextmanager
def temporarily_set(state: dict, **updates):
    """Set entries of a module-level override dict (forced modes and tile sizes, used by tests
    and benchmarks) for the duration of a with block, then restore them."""
    saved = dict(state)
    state.update(updates)
    try:
        yield
    finally:
        state.clear()
        state.update(saved)


def launch(name: str, kernel, grid, **kwargs) -> None:
    """Launch `kernel[grid](**kwargs)` and count it under `name`. An empty grid (an empty
    batch: nothing to compute, as torch returns empty outputs) launches nothing."""
    if 0 in grid:
        return
    from recgen.ops.common.tiling import capturing

    recording = capturing()
    if recording is not None:  # a tile capture: what would run, not run (no GPU to run it on)
        recording.launches.append({"label": recording.label, "name": name, "kernel": kernel.__name__,
                                   "grid": tuple(grid), "identity": identity(kernel, kwargs)})
        return
    kernel_for_launch(kernel)[grid](**kwargs)
    LAUNCH_COUNTS[name] += 1  # after the call: a launch the driver refused did not run


def torch_allows_tf32(op: str) -> bool:
    """Whether torch lets its own `op` use TF32 tensor cores for float32 on CUDA: 'rnn' (its
    recurrent layers, through cuDNN; TF32 by default), 'conv' (its convolutions, through cuDNN;
    TF32 by default) or 'matmul' (full float32 by default). recgen's kernels follow the flag of the
    torch op they replace, so a drop-in layer computes at the precision the torch.nn layer would,
    and is benchmarked against it like for like. Read from torch's fp32_precision settings (the
    op's own, else its backend's, else the global one; 'none' defers), or, on a torch without
    them, from the legacy allow_tf32 flags."""
    backends = torch.backends
    if op == "matmul":
        chain = (getattr(backends.cuda.matmul, "fp32_precision", None),)
        legacy = lambda: backends.cuda.matmul.allow_tf32  # noqa: E731
    elif op in ("rnn", "conv"):
        chain = (getattr(getattr(backends.cudnn, op, None), "fp32_precision", None),
                 getattr(backends.cudnn, "fp32_precision", None))
        legacy = lambda: backends.cudnn.allow_tf32  # noqa: E731
    else:
        raise ValueError(f"op must be 'rnn', 'conv' or 'matmul', got {op!r}")
    if chain[0] is None:
        return bool(legacy())
    for precision in chain + (getattr(backends, "fp32_precision", None),):
        if precision not in (None, "none"):
            return precision == "tf32"
    return False


def dot_flags(dtype: torch.dtype, op: str) -> dict:
    """DOT_FP32 and INPUT_PRECISION for tl.dot on operands of `dtype`, in a kernel standing in for
    torch's `op` (torch_allows_tf32).

    Under the interpreter bf16/fp16 dots are wrong, so operands are upcast, and the dots are
    exact float32 (the interpreter has no TF32). On a GPU float32 dots use TF32 exactly when
    torch allows it for `op`.
    """
    fp32 = dtype == torch.float32
    tf32 = fp32 and not interpreting() and torch_allows_tf32(op)
    return {"DOT_FP32": interpreting() or fp32, "INPUT_PRECISION": "tf32" if tf32 else "ieee"}

