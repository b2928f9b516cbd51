"""`recgen check`: every kernel against its reference on this machine's device.

On a machine without CUDA the kernels run on the CPU under Triton's interpreter (slow, so
the grid is small). One line per op and dtype; exit status 1 on any failure.
"""

from __future__ import annotations

import os
import sys
import time

import torch

# (label, cell, proj) and the shapes (T, B, I, H, lengths, reverse) every op is checked on:
# T=1, B=1, odd H, two batch tiles, packed lengths with the reverse direction.
OPS = [("lstm", "lstm", 0), ("lstm_proj", "lstm", 3), ("gru", "gru", 0),
       ("rnn_tanh", "rnn_tanh", 0), ("rnn_relu", "rnn_relu", 0)]
SHAPES = [(5, 3, 4, 13, None, False), (1, 1, 3, 5, None, True), (4, 17, 5, 8, [4, 1, 3] + [2] * 14, True)]


def run_check(dtypes=None, out=None) -> bool:
    """Run the grid; print one line per op and dtype; return True when everything passed."""
    out = out or sys.stdout
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernel modules are first imported
    from recgen.backend import triton_available
    from recgen.testing import DTYPE_NAMES, TOLERANCES, compare_direction, random_direction_inputs

    if not triton_available():
        print("recgen check: triton is not installed; only the reference path is available", file=out)
        return False
    device = "cuda" if cuda else "cpu"
    dtypes = dtypes or ([torch.float32, torch.float16, torch.bfloat16] if cuda else [torch.float32, torch.bfloat16])
    name = torch.cuda.get_device_name() if cuda else "CPU (Triton interpreter)"
    import triton
    print(f"recgen check on {name}: torch {torch.__version__}, triton {triton.__version__}", file=out)
    ok = True
    for label, cell, proj in OPS:
        for dtype in dtypes:
            start, worst, worst_name = time.perf_counter(), 0.0, ""
            for k, (T, B, I, H, lens, reverse) in enumerate(SHAPES):
                gen = torch.Generator().manual_seed(k)
                inputs = random_direction_inputs(cell, T, B, I, H, proj=min(proj, H - 1),
                                                 dtype=dtype, device=device, generator=gen)
                lengths = torch.tensor(lens) if lens else None
                for tensor_name, err in compare_direction(cell, inputs, lengths, reverse).items():
                    if not err <= worst:
                        worst, worst_name = err, tensor_name
            passed = worst <= TOLERANCES[dtype]
            ok &= passed
            print(f"{label:10s} {DTYPE_NAMES[dtype]:5s} max rel err {worst:.2e} ({worst_name or '-':5s}) "
                  f"tol {TOLERANCES[dtype]:.0e}  {'PASS' if passed else 'FAIL'}  "
                  f"{time.perf_counter() - start:.1f}s", file=out)
    print("all ops passed" if ok else "FAILURES above", file=out)
    return ok
