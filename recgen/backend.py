"""Which implementation runs an op, and which one ran.

Backends (`recgen.set_backend(name)`, or the RECGEN_BACKEND variable for the initial choice):

- `auto` (default): the Triton kernels where they run (CUDA tensors; CPU tensors when
  TRITON_INTERPRET=1 is set, under Triton's interpreter), torch's own native op everywhere else
  (CPU, MPS, XPU, any device or machine without Triton). Never the reference: off the GPU a
  converted model costs what the torch.nn model cost.
- `triton`: the kernels; an error if they cannot run on the tensor's device or dtype (float64).
- `torch`: torch's native op (`torch.nn.LSTM.forward` and friends through the parent class,
  torch's conv and norm modules for residual blocks), on any device.
- `reference`: recgen's independent pure-PyTorch step loops (recgen.reference), the ground truth
  of the tests; slow, never picked by `auto`.

What ran is recorded per call as one of IMPLEMENTATIONS: `last_implementation()` for the last
recgen call, `implementation_of(module)` for a module's last forward.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

BACKENDS = ("auto", "triton", "torch", "reference")
# What an op can run as: the compiled kernels (CUDA), the kernels under Triton's interpreter
# (CPU, TRITON_INTERPRET=1), torch's native op, recgen's reference step loops.
IMPLEMENTATIONS = ("kernels", "interpreter", "torch", "reference")

_state = {"backend": None, "last": None, "cpu_kernels": False}
# Where a module's last implementation is kept: a plain instance attribute (not a parameter or
# buffer, so state_dict is unchanged), written without nn.Module.__setattr__'s bookkeeping.
_MODULE_KEY = "_recgen_implementation"


def _validated(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def set_backend(name: str) -> None:
    """Choose the implementation for all recgen ops: 'auto', 'triton', 'torch' or 'reference'."""
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


@contextmanager
def kernels_on_cpu():
    """For a with block: CPU tensors go to the kernels' launchers without the interpreter
    (recgen.tools.capture.capture, which compiles the kernels and records their launches)."""
    saved = _state["cpu_kernels"]
    _state["cpu_kernels"] = True
    try:
        yield
    finally:
        _state["cpu_kernels"] = saved


def kernels_runnable(tensor: torch.Tensor) -> bool:
    """Whether the kernels can take data on `tensor.device`: CUDA, or the CPU under the
    interpreter (or inside kernels_on_cpu)."""
    return tensor.is_cuda or (tensor.is_cpu and (interpreting() or _state["cpu_kernels"]))


def triton_available() -> bool:
    try:
        import triton
    except ImportError:
        return False
    return hasattr(triton, "jit")


def implementation(tensor: torch.Tensor) -> str:
    """The implementation (one of IMPLEMENTATIONS) the current backend runs for data on
    `tensor.device`. Raises RuntimeError when 'triton' is forced where the kernels cannot run."""
    # Called on every forward: kept to a few attribute reads (the CPU path's whole overhead).
    choice = _state["backend"] or get_backend()
    if choice == "torch" or choice == "reference":
        return choice
    runnable = kernels_runnable(tensor)
    if choice == "auto" and tensor.dtype == torch.float64:
        return "torch"  # the kernels compute in float32: float64 is torch's op, at full precision
    if choice == "triton":
        if not triton_available():
            raise RuntimeError("recgen backend 'triton' was requested but triton is not installed")
        if not runnable:
            raise RuntimeError(
                f"recgen backend 'triton' cannot run on device {tensor.device}: use a CUDA tensor, "
                "or set TRITON_INTERPRET=1 before importing recgen to run the kernels on the CPU"
            )
    elif not (runnable and triton_available()):
        return "torch"
    return "kernels" if tensor.is_cuda else "interpreter"


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether the kernels (compiled or interpreted) run for data on `tensor.device`."""
    return implementation(tensor) in ("kernels", "interpreter")


def record(name: str, module: torch.nn.Module | None = None) -> str:
    """Note that `name` ran (for `module`, when given). Skipped while torch.compile traces: the
    record is a Python side effect that has no place in a graph. Returns `name`."""
    if not torch.compiler.is_compiling():
        _state["last"] = name
        if module is not None:
            module.__dict__[_MODULE_KEY] = name
    return name


def last_implementation() -> str | None:
    """What the last recgen call ran: 'kernels', 'interpreter', 'torch', 'reference' or None.

    >>> recgen.nn.LSTM(3, 4)(torch.randn(2, 1, 3)); recgen.backend.last_implementation()
    'torch'
    """
    return _state["last"]


def implementation_of(module: torch.nn.Module) -> str | None:
    """What `module`'s last forward ran (None before its first call)."""
    return module.__dict__.get(_MODULE_KEY)


KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_kernel_dtype(tensor: torch.Tensor, what: str) -> None:
    """The kernels compute in float32 (float16/bfloat16 I/O): other dtypes are refused, never
    silently computed at a lower precision."""
    if tensor.dtype not in KERNEL_DTYPES:
        raise RuntimeError(f"{what}: recgen's kernels take float32, float16 or bfloat16, got {tensor.dtype}; "
                           "backend 'auto' or 'torch' runs torch's own op for it")
