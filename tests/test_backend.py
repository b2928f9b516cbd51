"""Backends: which implementation runs where, proof that it ran, agreement of the three."""

import os
import subprocess
import sys

import pytest
import torch

import recgen
from recgen.backend import implementation, implementation_of, last_implementation, use_triton
from recgen.ops import LAUNCH_COUNTS
from standin_blocks import BasicBlock, ResnetBlock


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        recgen.set_backend("cuda")


def test_env_variable_sets_initial_backend_and_is_validated():
    code = "import recgen; print(recgen.get_backend())"
    for name in ("reference", "torch"):
        env = dict(os.environ, RECGEN_BACKEND=name)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.stdout.strip() == name, out.stderr
    env["RECGEN_BACKEND"] = "fast"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "RECGEN_BACKEND: unknown backend 'fast'" in bad.stderr


def test_auto_runs_kernels_where_they_can_run(device):
    x = torch.zeros(1, device=device)
    assert use_triton(x)  # CUDA, or the CPU under TRITON_INTERPRET=1 (set by conftest)
    assert implementation(x) == ("kernels" if device == "cuda" else "interpreter")
    for name in ("reference", "torch"):
        recgen.set_backend(name)
        assert not use_triton(x) and implementation(x) == name


def test_auto_runs_torch_where_kernels_cannot(monkeypatch):
    """Off the GPU without the interpreter, and on devices Triton does not serve: torch's op,
    never the reference."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert implementation(torch.zeros(1)) == "torch"
    assert implementation(torch.empty(1, device="meta")) == "torch"
    recgen.set_backend("triton")
    with pytest.raises(RuntimeError, match="cannot run on device cpu"):
        implementation(torch.zeros(1))


def _lstm():
    return torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2)


# (id, torch module builder, input builder, the aten op torch's own forward runs)
MODULES = [
    ("lstm", _lstm, lambda: torch.randn(4, 2, 3), "aten::lstm"),
    ("gru", lambda: torch.nn.GRU(3, 5, batch_first=True), lambda: torch.randn(2, 4, 3), "aten::gru"),
    ("rnn_tanh", lambda: torch.nn.RNN(3, 5), lambda: torch.randn(4, 2, 3), "aten::rnn_tanh"),
    ("rnn_relu", lambda: torch.nn.RNN(3, 5, nonlinearity="relu"), lambda: torch.randn(4, 2, 3),
     "aten::rnn_relu"),
    ("lstm_cell", lambda: torch.nn.LSTMCell(3, 5), lambda: torch.randn(2, 3), "aten::lstm_cell"),
    ("gru_cell", lambda: torch.nn.GRUCell(3, 5), lambda: torch.randn(2, 3), "aten::gru_cell"),
    ("rnn_cell", lambda: torch.nn.RNNCell(3, 5), lambda: torch.randn(2, 3), "aten::rnn_tanh_cell"),
    ("basic_block", lambda: BasicBlock(3, 3), lambda: torch.randn(2, 3, 5, 4), "aten::conv2d"),
    ("resnet_block", lambda: ResnetBlock(3), lambda: torch.randn(2, 3, 5, 4), "aten::conv2d"),
    ("residual_block", lambda: recgen.nn.ResidualBlock(3, 4, norm="instance"),
     lambda: torch.randn(2, 3, 5, 4), "aten::conv2d"),
]


def _first_tensor(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _run(module, x, backend):
    """Forward + backward under `backend`: (outputs and gradients, aten ops seen, launches,
    whether torch's own conv modules ran)."""
    recgen.set_backend(backend)
    module.zero_grad()
    x = x.clone().requires_grad_()
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    called = []
    hooks = [c.register_forward_hook(lambda *_: called.append(1)) for c in convs]
    before = sum(LAUNCH_COUNTS.values())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = module(x)
        flat = [o for o in (out if isinstance(out, tuple) else (out,))]
        flat = [t for o in flat for t in (o if isinstance(o, tuple) else (o,))]
        sum((t.float() * (k + 1)).sum() for k, t in enumerate(flat)).backward()
    for h in hooks:
        h.remove()
    launches = sum(LAUNCH_COUNTS.values()) - before
    values = [t.detach() for t in flat] + [x.grad] + [p.grad for p in module.parameters()]
    return values, {e.name for e in prof.events()}, launches, bool(called)


@pytest.mark.parametrize("name,build,make_input,torch_op", MODULES, ids=[m[0] for m in MODULES])
def test_each_backend_runs_its_implementation_and_all_agree(name, build, make_input, torch_op, device):
    torch.manual_seed(0)
    module = recgen.convert(build()).to(device)
    x = make_input().to(device)
    results = {}
    for backend, expected in (("triton", "kernels" if device == "cuda" else "interpreter"),
                              ("torch", "torch"), ("reference", "reference")):
        values, ops, launches, conv_modules_ran = _run(module, x, backend)
        assert implementation_of(module) == expected and last_implementation() is not None
        is_block = torch_op == "aten::conv2d"
        if backend == "triton":
            assert launches > 0 and torch_op not in ops and not conv_modules_ran
        elif backend == "torch":
            assert launches == 0 and torch_op in ops
            assert conv_modules_ran or not is_block
        else:  # the reference: no launch, and not torch's recurrent op or conv modules
            assert launches == 0 and (torch_op not in ops if not is_block else not conv_modules_ran)
        results[backend] = values
    for backend in ("triton", "reference"):
        for got, want in zip(results[backend], results["torch"]):
            torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_functional_direction_agrees_across_backends(cell, device):
    """recgen.functional.run_direction with lengths and the reverse direction: torch's op (packed
    internally), the reference and the kernels give the same outputs and states."""
    from recgen.functional import run_direction
    from recgen.testing import random_direction_inputs

    inputs = random_direction_inputs(cell, 6, 4, 3, 5, proj=2 if cell == "lstm" else 0, device=device,
                                     generator=torch.Generator().manual_seed(1))
    order = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
    lengths = torch.tensor([6, 2, 4, 1])
    outs = {}
    for backend in ("triton", "torch", "reference"):
        recgen.set_backend(backend)
        outs[backend] = run_direction(cell, *[inputs.get(n) for n in order], lengths=lengths, reverse=True)
        assert last_implementation() == implementation(inputs["x"])
    for backend in ("triton", "reference"):
        for got, want in zip(outs[backend], outs["torch"]):
            if want is not None:
                torch.testing.assert_close(got.detach(), want.detach(), rtol=2e-4, atol=2e-5)


def test_package_works_without_triton():
    """With triton unimportable, the package imports and auto runs torch's op on the CPU."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, recgen\n"
        "m = recgen.nn.LSTM(3, 4)\n"
        "y, (h, c) = m(torch.randn(2, 1, 3))\n"
        "assert y.shape == (2, 1, 4)\n"
        "print('ran:', recgen.backend.implementation_of(m))\n"
        "recgen.set_backend('triton')\n"
        "try:\n"
        "    recgen.nn.LSTM(3, 4)(torch.randn(2, 1, 3))\n"
        "except RuntimeError as e:\n"
        "    print('raised:', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ran: torch" in out.stdout
    assert "raised: recgen backend 'triton' was requested but triton is not installed" in out.stdout
