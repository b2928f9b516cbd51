"""Ahead-of-time compilation of recgen's kernels for an NVIDIA target, on a machine without a GPU.

Triton's compiler runs down to a cubin (ptxas included) with no device present; what the cubin
needs per program (registers, spill stack, shared memory) is then read with the cuobjdump Triton
ships. Used by tests/test_compile_sm90.py (every kernel must compile for Hopper) and by
bench/kernel_resources.py (the persistent kernels' registers, spills and occupancy on an H200).

Must run without TRITON_INTERPRET=1: under the interpreter the kernels are not JITFunctions.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

# Pointers that carry the I/O dtype (the rest are float32 state or saved tensors, or int32).
IO_POINTERS = {"xw_ptr", "y_ptr", "dy_ptr", "w_hh_ptr", "w_hr_ptr", "h_prev_ptr", "b_hh_ptr"}
INT_POINTERS = {"lengths_ptr", "counter_ptr"}
FLOAT_SCALARS = {"in_slope", "out_slope", "slope"}

# Per-SM limits of compute capability 9.0 (H100/H200): NVIDIA, Hopper tuning guide, section 1.4.1
# (the same values the launcher reads from torch.cuda.get_device_properties on the GPU).
SM90_LIMITS = {"registers": 65536, "threads": 2048, "shared_bytes": 233472, "shared_per_block": 232448,
               "max_registers_per_thread": 255, "sms_h200": 132}


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
    return {"registers": regs, "stack_bytes": stack, "shared_bytes": static_shared + compiled.metadata.shared,
            "num_warps": compiled.metadata.num_warps}
