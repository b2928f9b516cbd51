"""recgen's ops in torch.library, so torch.compile sees each launcher as one operator.

Every launcher that starts a kernel is registered as `torch.ops.recgen.<name>`:
- with `torch.library.triton_op` where torch has it and the kernels are compiled: torch.compile
  then traces the launcher itself, and the kernels it starts through `wrap_triton`, into the
  graph (Inductor sees and schedules the user kernels);
- with `torch.library.custom_op` and a shape-only fake otherwise: an older torch, or the Triton
  interpreter (TRITON_INTERPRET=1), whose kernels read tensor memory and so cannot be traced
  with fake tensors. The op is then opaque to the compiler, which still compiles the model
  around it without a graph break.
The choice is made once, when the first op registers (see kind()); the interpreter is on or off
for the whole process (TRITON_INTERPRET is read when Triton first decorates the kernels).

Differentiable ops get their autograd with `torch.library.register_autograd`, from the
setup_context/backward of the op's autograd Function (LSTMFunction, ...), so eager calls,
`Function.apply` and compiled graphs share one backward.
"""

from __future__ import annotations

import torch

from recgen.backend import interpreting

NAMESPACE = "recgen"


def registration_kind() -> str:
    """'triton_op' or 'custom_op' (see the module docstring)."""
    if hasattr(torch.library, "triton_op") and hasattr(torch.library, "wrap_triton") and not interpreting():
        return "triton_op"
    return "custom_op"


_chosen: dict = {}


def kind() -> str:
    """The registration form of recgen's ops: registration_kind() when the first op registers (an
    op module's first import), then fixed for the process, as the registrations are."""
    if "kind" not in _chosen:
        _chosen["kind"] = registration_kind()
    return _chosen["kind"]


def register_op(name: str, schema: str, fake):
    """Decorator: register `fn` as torch.ops.recgen.<name> with `schema` (in the form kind()
    gives); `fake` computes output metadata for the custom_op form. Ops never
    mutate their inputs: every output is a fresh tensor.

    triton_op infers the schema from fn's type annotations (it ignores a given one), so the
    annotations must say what `schema` says; a mismatch raises here, at registration."""
    qualname = f"{NAMESPACE}::{name}"

    def register(fn):
        if kind() == "custom_op":
            op = torch.library.custom_op(qualname, fn, mutates_args=(), schema=schema)
            op.register_fake(fake)
            return op
        op = torch.library.triton_op(qualname, fn, mutates_args=())
        declared = str(torch._C.parse_schema(qualname + schema))
        registered = str(getattr(torch.ops.recgen, name).default._schema)
        if registered != declared:
            raise TypeError(f"{qualname}: the annotations of {fn.__qualname__} give the schema "
                            f"{registered}, the declared schema is {declared}")
        return op

    return register


def register_function(name: str, function: type) -> None:
    """Use an autograd Function's setup_context and backward as the autograd of recgen::<name>."""
    torch.library.register_autograd(f"{NAMESPACE}::{name}", function.backward,
                                    setup_context=function.setup_context)


def kernel_for_launch(kernel):
    """The kernel as launchers call it: through wrap_triton for the triton_op form (so that
    torch.compile traces the launch; a plain call outside tracing), the kernel itself otherwise."""
    return torch.library.wrap_triton(kernel) if kind() == "triton_op" else kernel


def missing_output(t: torch.Tensor) -> torch.Tensor:
    """What an op returns in place of an output that does not exist (a schema returns Tensors,
    not None): an empty float32 tensor on t's device. Callers know from the inputs whether the
    output exists (e.g. w_hr is None)."""
    return t.new_empty(0, dtype=torch.float32)


def owned_copy(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in `dtype`, contiguous, never a view of a launcher's scratch buffer (op outputs must
    have the strides the fake gives them, and must not alias one another)."""
    return t.to(dtype, memory_format=torch.contiguous_format, copy=True)


def needs_saving(*tensors) -> bool:
    """Whether a forward must save what its backward reads: grad mode on and some input
    requiring grad (under torch.no_grad or for frozen inputs the kernels skip those writes)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def check_saved(name: str, save: bool) -> None:
    if not save:
        raise RuntimeError(f"recgen::{name} was called with save=False, so it kept nothing to "
                           "differentiate; call it with save=True when gradients are needed")
