"""Ahead-of-time compilation of recgen's kernels for an NVIDIA target, on a machine without a GPU.

Triton's compiler runs down to a cubin (ptxas included) with no device present; what the cubin
needs per program (registers, spill stack, shared memory) is then read with the cuobjdump Triton
ships. Used by tests/test_compile_sm90.py (every kernel must compile for Hopper) and by
bench/kernel_resources.py (the persistent kernels' registers, spills and occupancy on an H200).

Must run without TRITON_INTERPRET=1: under the interpreter the kernels are not JITFunctions.

Two ways in: compile_kernel() from constexprs and an I/O dtype name (the sm_90 compile test and
bench/kernel_resources.py), and launch_resources() from a launcher's own keyword arguments
(tensors, scalars, tile constexprs, num_warps/num_stages), specialised as Triton's runtime
specialises them, which a tile capture (recgen/tools/capture.py) uses to make the launchers' tile
choices without a GPU; identity_resources() from a launch's identity
(recgen/ops/common/kernel_identity.py), to recompile a committed table's launches.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

from recgen.ops.common.kernel_identity import TORCH_TYPES
from recgen.ops.common.tiling import SM90_LIMITS

# Pointers that carry the I/O dtype (the rest are float32 state or saved tensors, or int32).
IO_POINTERS = {"xw_ptr", "y_ptr", "dy_ptr", "w_hh_ptr", "w_hr_ptr", "h_prev_ptr", "b_hh_ptr"}
INT_POINTERS = {"lengths_ptr", "counter_ptr"}
INT8_POINTERS = {"sign_ptr"}  # the dense kernels' sign bits of z
FLOAT_SCALARS = {"in_slope", "out_slope", "slope"}


def signature(fn, values: dict, io: str, io_pointers=IO_POINTERS, state_pointers=()) -> tuple:
    """Triton signature and constexprs of `fn` for AOT compilation: `io` ("bf16", "fp16", "fp32")
    for the pointers in io_pointers and state_pointers, float32 for the other pointers, int32 for
    the other scalars; constexprs from `values`."""
    sig, constexprs = {}, {}
    for p in fn.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
            constexprs[(fn.arg_names.index(p.name),)] = values[p.name]
        elif p.name in INT_POINTERS:
            sig[p.name] = "*i32"
        elif p.name in INT8_POINTERS:
            sig[p.name] = "*i8"
        elif p.name.endswith("_ptr"):
            sig[p.name] = f"*{io}" if p.name in io_pointers or p.name in state_pointers else "*fp32"
        elif p.name in FLOAT_SCALARS:
            sig[p.name] = "fp32"
        else:
            sig[p.name] = "i32"
    return sig, constexprs


def compile_kernel(fn, values: dict, io: str, num_warps: int = 4, arch: int = 90, num_stages: int | None = None,
                   **signature_kwargs):
    """Compile `fn` for sm_`arch` with the constexprs in `values` (and Triton's default
    software-pipelining depth unless num_stages is given); returns the CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, constexprs = signature(fn, values, io, **signature_kwargs)
    return triton.compile(ASTSource(fn, sig, constexprs=constexprs), target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, **({"num_stages": num_stages} if num_stages else {})})


def launch_resources(fn, args: dict, arch: int = 90):
    """resource_usage() (spilled_bytes, registers, shared_bytes, num_warps) of `fn` compiled for
    sm_`arch` from a launch's keyword `args`, through Triton's own argument binder and packing
    (the runtime's specialisation, signature, attributes and options: the same source and
    options, so the same compiled kernel and cache entry, as that launch on the GPU); None when
    its shared memory exceeds what one program may have on Hopper."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    missing = [p.name for p in fn.params if p.name not in args]
    if missing:
        raise TypeError(f"{fn.__name__}: no value for {missing}")
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(**args)
    options, signature, constexprs, attrs = fn._pack_args(backend, args, bound, specialization, options)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    usage = resource_usage(compiled)
    if usage["shared_bytes"] > SM90_LIMITS["shared_per_block"]:
        return None
    return usage


class _StandIn:
    """A pointer argument rebuilt from an identity: its dtype, and an address aligned or not."""

    def __init__(self, dtype, aligned: bool):
        self.dtype, self._address = dtype, 0 if aligned else 8

    def data_ptr(self) -> int:
        return self._address


def identity_resources(fn, kernel_identity: tuple, arch: int = 90):
    """launch_resources() of `fn` for a launch that recgen.ops.common.kernel_identity.identity()
    described: arguments rebuilt with the same dtypes and specialisations (recompiling a
    committed table's launches)."""
    import torch

    _, specs, options = kernel_identity
    dtypes = {v: getattr(torch, k) for k, v in TORCH_TYPES.items()}
    constexpr_names = {p.name for p in fn.params if p.is_constexpr}
    args = dict(options)
    for name, spec in specs:
        if name in constexpr_names or not isinstance(spec, str):
            args[name] = spec
        elif spec.startswith("*"):
            args[name] = _StandIn(dtypes[spec[1:].removesuffix("D")], spec.endswith("D"))
        elif spec.startswith(("i32", "i64")):
            args[name] = (16 if spec.endswith("D") else 17) + (2 ** 32 if spec.startswith("i64") else 0)
        elif spec == "i1":
            args[name] = True
        else:
            args[name] = 0.5
    return launch_resources(fn, args, arch)


KERNEL_MODULES = ("recurrent.lstm", "recurrent.gru", "recurrent.rnn", "recurrent.lstm_persistent",
                  "recurrent.gru_persistent", "recurrent.rnn_persistent", "conv.fwd", "conv.bwd", "conv.affine",
                  "dense.linear")


def kernel_named(name: str):
    """The @triton.jit function `name` of recgen.kernels."""
    import importlib

    for module in KERNEL_MODULES:
        fn = getattr(importlib.import_module(f"recgen.kernels.{module}"), name, None)
        if fn is not None:
            return fn
    raise LookupError(f"no kernel {name!r} in recgen.kernels")


def resource_usage(compiled) -> dict:
    """Registers per thread, stack bytes per thread (spilled registers: these kernels have no
    local arrays) and shared memory bytes per program of a compiled kernel, read from its cubin."""
    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        dump = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True,
                              check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", dump)
    if found is None:
        raise RuntimeError(f"no resource line in cuobjdump's output:\n{dump}")
    regs, stack, static_shared = (int(v) for v in found.groups())
    return {"registers": regs, "stack_bytes": stack, "spilled_bytes": stack,
            "shared_bytes": static_shared + compiled.metadata.shared, "num_warps": compiled.metadata.num_warps}
