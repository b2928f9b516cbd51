"""`recgen check`: every kernel against its reference on this machine's device: the recurrences
(outputs and all gradients), the fused convolution (forward and backward), residual blocks
(outputs, running statistics and all gradients, train and eval) and the dense layer (output and
every gradient, each activation).

On a machine without CUDA the kernels run on the CPU under Triton's interpreter (slow, so
the grid is small). One line per op and dtype; exit status 1 on any failure.
"""

from __future__ import annotations

import sys
import time

import torch

# (label, cell, proj) and the shapes (T, B, I, H, lengths, reverse) every op is checked on:
# T=1, B=1, odd H, two batch tiles, packed lengths with the reverse direction.
OPS = [("lstm", "lstm", 0), ("lstm_proj", "lstm", 3), ("gru", "gru", 0),
       ("rnn_tanh", "rnn_tanh", 0), ("rnn_relu", "rnn_relu", 0)]
SHAPES = [(5, 3, 4, 13, None, False), (1, 1, 3, 5, None, True), (4, 17, 5, 8, [4, 1, 3] + [2] * 14, True)]
# Fused convolution: (x shape, CO, K, kwargs, optional tensors): epilogue, a normalisation's
# centred prologue with reflection + stride 2 + upsampling, statistics.
CONV_CASES = [
    ((2, 3, 7, 10), 5, 3, dict(out_act="leaky_relu", out_slope=0.2), {"out_scale", "out_shift", "residual"}),
    ((1, 5, 6, 7), 4, 3, dict(in_act="relu", padding_mode="reflect", stride=2, upsample=True),
     {"in_centre", "in_scale", "in_shift", "out_shift"}),
    ((2, 3, 5, 6), 4, 5, dict(stats=True), {"out_shift"}),
]
# Residual blocks: (ResidualBlock kwargs, in_channels, train).
BLOCK_CASES = [(dict(norm="batch"), 3, True), (dict(norm="batch", out_channels=5, stride=2), 3, False),
               (dict(norm="instance", padding_mode="reflect", upsample=True, out_channels=4), 5, True)]
# Dense layer: (leading dims, I, O, activation, negative_slope, bias, residual): B=1, odd I and O,
# a 3-D input, every activation (leaky_relu with a negative slope: the sign-bit path), with and
# without bias and residual; O = 70 and I = 40 take two output and input tiles.
DENSE_CASES = [
    ((3,), 7, 5, "relu", 0.01, True, True),
    ((1,), 5, 3, "tanh", 0.01, False, False),
    ((2, 3), 9, 6, "sigmoid", 0.01, True, True),
    ((5,), 6, 7, "leaky_relu", -0.3, True, False),
    ((4,), 40, 70, "leaky_relu", 0.2, False, True),
    ((2,), 5, 4, "none", 0.01, True, False),
]
# In half precision a value within rounding of a ReLU kink may land on the other side than in
# float64, and its whole gradient moves (then BatchNorm's backward spreads it to every input):
# a real rounding effect, not an error of the kernels. Half-precision blocks are therefore
# checked with a kink-free activation (leaky_relu of slope 1, through the same fused code
# path); the kinks are checked in float32. Without the kinks a per-channel shift before a norm
# (norm1's bias, with reflection padding) has an exactly zero gradient, which half precision
# can only match as rounding noise, so the norms drop their affine parameters (checked in fp32).
HALF_BLOCK_OVERRIDES = dict(activation="leaky_relu", negative_slope=1.0)


def half_precision_safe(kwargs: dict) -> dict:
    """ResidualBlock kwargs made kink-free for a half-precision comparison (see above)."""
    return {**kwargs, **HALF_BLOCK_OVERRIDES, **({"affine": False} if kwargs.get("norm") else {})}


def _recurrent_errors(cell, proj, dtype, device):
    from recgen.testing import compare_direction, random_direction_inputs
    for k, (T, B, I, H, lens, reverse) in enumerate(SHAPES):
        gen = torch.Generator().manual_seed(k)
        inputs = random_direction_inputs(cell, T, B, I, H, proj=min(proj, H - 1), dtype=dtype,
                                         device=device, generator=gen)
        yield compare_direction(cell, inputs, torch.tensor(lens) if lens else None, reverse)


def _conv_errors(dtype, device):
    from recgen.testing import compare_fused_conv
    for k, (shape, co, kernel, kwargs, present) in enumerate(CONV_CASES):
        yield compare_fused_conv(shape, co, kernel, kwargs, present, dtype, device, seed=k)


def _block_errors(dtype, device):
    import recgen
    from recgen.testing import compare_block, randomise_norms
    for k, (kwargs, cin, train) in enumerate(BLOCK_CASES):
        torch.manual_seed(k)
        if dtype != torch.float32:
            kwargs = half_precision_safe(kwargs)
        block = recgen.nn.ResidualBlock(cin, **kwargs)
        randomise_norms(block)
        yield compare_block(block, torch.randn(2, cin, 7, 6), train, dtype, device, seed=k)


def _dense_errors(dtype, device):
    from recgen.testing import compare_dense
    for k, (lead, I, O, act, slope, bias, residual) in enumerate(DENSE_CASES):
        yield compare_dense(lead, I, O, act, slope, bias, residual, dtype, device, seed=k)


# Recurrence modes `recgen check --mode` can force (recgen.ops.common.tiling.forced_tiles); 'auto' is
# the launchers' own rule (resident at these sizes). Streamed tiles are forced at tl.dot's
# minimum width, so that the small shapes still take several tiles per step.
MODES = ("auto", "resident", "streamed", "persistent")
STREAMED_BLOCK = 16


def _in_mode(mode: str, errors_of):
    """errors_of(dtype, device) run with the recurrence mode forced (none for 'auto')."""
    def run(dtype, device):
        import contextlib

        from recgen.ops.common.tiling import forced_tiles
        forced = contextlib.nullcontext() if mode == "auto" else \
            forced_tiles(mode=mode, stream_block=STREAMED_BLOCK if mode == "streamed" else None)
        with forced:
            yield from errors_of(dtype, device)
    return run


def checks(modes=("auto",)):
    """(label, errors(dtype, device) -> iterable of {tensor: relative error}) for every op, the
    recurrences once per mode of `modes` (labelled `op[mode]` unless the mode is 'auto'; the
    persistent mode for the ops that have it: every recurrence but the projected LSTM)."""
    ops = []
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        for label, cell, proj in OPS:
            if mode == "persistent" and proj:
                continue
            errors_of = _in_mode(mode, lambda dt, dev, c=cell, p=proj: _recurrent_errors(c, p, dt, dev))
            ops.append((label if mode == "auto" else f"{label}[{mode}]", errors_of))
    return ops + [("fused_conv", _conv_errors), ("res_block", _block_errors), ("dense", _dense_errors)]


def run_check(dtypes=None, out=None, modes=("auto",)) -> bool:
    """Run the grid (the recurrences in each mode of `modes`); print one line per op and dtype;
    return True when everything passed."""
    out = out or sys.stdout
    cuda = torch.cuda.is_available()
    from recgen.backend import backend, interpreting, triton_available
    from recgen.testing import full_float32

    if not triton_available():
        print("recgen check: triton is not installed; only the reference path is available", file=out)
        return False
    if not cuda and not interpreting():
        raise RuntimeError("recgen check: no CUDA device, and TRITON_INTERPRET=1 was not set before the process "
                           "started; the `recgen check` command sets it, run_check needs it set")
    device = "cuda" if cuda else "cpu"
    dtypes = dtypes or ([torch.float32, torch.float16, torch.bfloat16] if cuda else [torch.float32, torch.bfloat16])
    name = torch.cuda.get_device_name() if cuda else "CPU (Triton interpreter)"
    import triton
    print(f"recgen check on {name}: torch {torch.__version__}, triton {triton.__version__}", file=out)
    print("float32 at full precision: TF32 off for torch and recgen alike (recgen.testing.full_float32)", file=out)
    with full_float32(), backend("triton"):  # the kernels, whatever RECGEN_BACKEND says
        ok = _run_checks(dtypes, device, out, modes)
    print("all ops passed" if ok else "FAILURES above", file=out)
    return ok


def _run_checks(dtypes, device, out, modes=("auto",)) -> bool:
    """One line per op and dtype (the worst error of any output or gradient); True if all pass.
    A line passes only if its kernels ran: a persistent line only if persistent kernels did (a
    plan the device cannot hold falls back to the single-program kernels, which fails it)."""
    from recgen.backend import implementation
    from recgen.ops import LAUNCH_COUNTS
    from recgen.testing import DTYPE_NAMES, TOLERANCES

    ok = True
    ran = implementation(torch.empty(0, device=device))  # 'kernels' on CUDA, else 'interpreter'
    ops = checks(modes)
    width = max(10, *(len(label) for label, _ in ops))
    for label, errors_of in ops:
        counted = (lambda name: name.endswith("_persistent")) if label.endswith("[persistent]") else bool
        for dtype in dtypes:
            start, worst, worst_name = time.perf_counter(), 0.0, ""
            launches = sum(n for name, n in LAUNCH_COUNTS.items() if counted(name))
            for errors in errors_of(dtype, device):
                for tensor_name, err in errors.items():
                    if not err <= worst:
                        worst, worst_name = err, tensor_name
            launches = sum(n for name, n in LAUNCH_COUNTS.items() if counted(name)) - launches
            # A line passes only if the kernels ran: a comparison of the reference with itself
            # would show no error.
            passed = worst <= TOLERANCES[dtype] and launches > 0
            ok &= passed
            print(f"{label:{width}s} {DTYPE_NAMES[dtype]:5s} max rel err {worst:.2e} ({worst_name or '-':14s}) "
                  f"tol {TOLERANCES[dtype]:.0e}  {'PASS' if passed else 'FAIL'}  ran: {ran} "
                  f"({launches} launches)  {time.perf_counter() - start:.1f}s", file=out)
    return ok
