"""Which implementation runs an op: the Triton kernels or the pure-PyTorch reference.

`auto` (the default) runs the Triton kernels on CUDA tensors, and on CPU tensors only when
TRITON_INTERPRET=1 is set (the kernels then run under Triton's interpreter); otherwise the
reference runs. `triton` forces the kernels (an error if they cannot run on the tensor's
device); `reference` forces the reference. The RECGEN_BACKEND variable sets the initial choice.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

BACKENDS = ("auto", "triton", "reference")
_state = {"backend": None}


def _validated(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def set_backend(name: str) -> None:
    """Choose the implementation for all recgen ops: 'auto', 'triton' or 'reference'."""
    _state["backend"] = _validated(name, "recgen.set_backend")


def get_backend() -> str:
    if _state["backend"] is None:
        _state["backend"] = _validated(os.environ.get("RECGEN_BACKEND", "auto"), "RECGEN_BACKEND")
    return _state["backend"]


@contextmanager
def backend(name: str):
    """Temporarily use another backend: `with recgen.backend.backend('reference'): ...`."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def interpreting() -> bool:
    """True when Triton kernels run on the CPU under TRITON_INTERPRET=1."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    try:
        import triton
    except ImportError:
        return False
    return hasattr(triton, "jit")


def use_triton(tensor: torch.Tensor) -> bool:
    """Decide, for an op whose data lives on `tensor.device`, whether the kernels run."""
    choice = get_backend()
    if choice == "reference":
        return False
    runnable = tensor.is_cuda or (tensor.device.type == "cpu" and interpreting())
    if choice == "triton":
        if not triton_available():
            raise RuntimeError("recgen backend 'triton' was requested but triton is not installed")
        if not runnable:
            raise RuntimeError(
                f"recgen backend 'triton' cannot run on device {tensor.device}: use a CUDA tensor, "
                "or set TRITON_INTERPRET=1 before importing recgen to run the kernels on the CPU"
            )
        return True
    return runnable and triton_available()
