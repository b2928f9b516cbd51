"""The recurrent ops as torch.library operators: opcheck on every op, torch.compile with
fullgraph=True of models holding recgen modules (same results as eager, kernels proven to run),
and the registration switch.

On the CPU the ops are custom_ops (the interpreter cannot be traced with fake tensors) and the
compiled tests use the aot_eager backend (Dynamo + AOTAutograd, the parts that must not break)
plus one Inductor case; the `gpu` tests run Inductor on CUDA with the triton_op registration."""

import os
import subprocess
import sys

import pytest
import torch

import recgen
from recgen.ops import LAUNCH_COUNTS
from recgen.ops.common import library
from recgen.testing import TOLERANCES, max_rel_error

TOL = TOLERANCES[torch.float32]
CUDA = torch.cuda.is_available()
BACKEND = "inductor" if CUDA else "aot_eager"
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
recgen.ops.register_all()  # the tests call torch.ops.recgen.* directly


def rnd(*shape, device="cpu", dtype=torch.float32, grad=False):
    return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(grad)


# --------------------------------------------------------------------------- opcheck

def _lstm_args(D, T, B, H, P, proj, lengths, grad, device):
    return (rnd(T, B, D * 4 * H, device=device, grad=grad), rnd(D, B, P, device=device, grad=grad),
            rnd(D, B, H, device=device, grad=grad), rnd(D, 4 * H, P, device=device, grad=grad) * 0.3,
            rnd(D, P, H, device=device, grad=grad) * 0.3 if proj else None, lengths, False, True)


def _leaf(args):
    return tuple(a.detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args)


OP_CASES = [
    # (D, T, B, H, P, proj, lengths, grad)
    pytest.param(1, 3, 2, 5, 5, False, None, False, id="plain"),
    pytest.param(2, 3, 3, 5, 3, True, [3, 2, 1], True, id="bidir-proj-lengths-grad"),
    pytest.param(1, 1, 1, 3, 3, False, None, True, id="T1-B1-grad"),
]


@pytest.mark.parametrize("D,T,B,H,P,proj,lengths,grad", OP_CASES)
def test_opcheck_lstm(device, D, T, B, H, P, proj, lengths, grad):
    lengths = None if lengths is None else torch.tensor(lengths, device=device)
    args = _leaf(_lstm_args(D, T, B, H, P, proj, lengths, grad, device))
    torch.library.opcheck(torch.ops.recgen.lstm_fwd, args)
    y, hn, cn, gates, c_all, m_all = torch.ops.recgen.lstm_fwd(*args)
    bwd = (rnd(D, T, B, P, device=device), rnd(D, B, P, device=device), rnd(D, B, H, device=device),
           gates.detach(), c_all.detach(), args[2].detach(), args[3].detach(),
           None if args[4] is None else args[4].detach(), lengths, False)
    torch.library.opcheck(torch.ops.recgen.lstm_bwd, bwd)


@pytest.mark.parametrize("D,T,B,H,lengths,grad", [
    pytest.param(1, 3, 2, 5, None, False, id="plain"),
    pytest.param(2, 3, 3, 6, [3, 2, 1], True, id="bidir-lengths-grad"),
])
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_gru(device, D, T, B, H, lengths, grad, bias):
    lengths = None if lengths is None else torch.tensor(lengths, device=device)
    args = _leaf((rnd(T, B, D * 3 * H, device=device, grad=grad), rnd(D, B, H, device=device, grad=grad),
                  rnd(D, 3 * H, H, device=device, grad=grad) * 0.3,
                  rnd(D, 3 * H, device=device, grad=grad) if bias else None, lengths, False, True))
    torch.library.opcheck(torch.ops.recgen.gru_fwd, args)
    y, hn, saved = torch.ops.recgen.gru_fwd(*args)
    h_prev = rnd(D, T, B, H, device=device)
    torch.library.opcheck(torch.ops.recgen.gru_bwd, (rnd(D, T, B, H, device=device), rnd(D, B, H, device=device),
                                                     saved.detach(), h_prev, args[2].detach(), lengths, False))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("D,lengths,grad", [(1, None, False), (2, [3, 1], True)])
def test_opcheck_rnn(device, nonlinearity, D, lengths, grad):
    T, B, H = 3, 2, 5
    lengths = None if lengths is None else torch.tensor(lengths, device=device)
    args = _leaf((rnd(T, B, D * H, device=device, grad=grad), rnd(D, B, H, device=device, grad=grad),
                  rnd(D, H, H, device=device, grad=grad) * 0.3, lengths, False, nonlinearity, True))
    torch.library.opcheck(torch.ops.recgen.rnn_fwd, args)
    y, hn, act = torch.ops.recgen.rnn_fwd(*args)
    torch.library.opcheck(torch.ops.recgen.rnn_bwd, (rnd(D, T, B, H, device=device), rnd(D, B, H, device=device),
                                                     act.detach(), args[2].detach(), lengths, False, nonlinearity))


def test_function_apply_matches_the_op(device):
    """LSTMFunction.apply and torch.ops.recgen.lstm_fwd share one backward: same gradients."""
    from recgen.ops.recurrent.lstm import LSTMFunction

    base = _lstm_args(2, 4, 3, 5, 5, False, None, True, device)
    grads = []
    for call in (LSTMFunction.apply, torch.ops.recgen.lstm_fwd):
        args = _leaf(base)
        y, hn, cn = call(*args)[:3]
        (y.square().sum() + hn.sum() + cn.sum()).backward()
        grads.append([a.grad for a in args if isinstance(a, torch.Tensor) and a.requires_grad])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru", "rnn"])
def test_inference_skips_the_saved_tensors(device, cell):
    """Under torch.no_grad the forward kernels write no saved tensors (save=False): same outputs,
    empty saved outputs, and opcheck holds for that form too."""
    T, B, H, D = 4, 3, 5, 2
    lengths = torch.tensor([4, 2, 1], device=device)
    if cell.startswith("lstm"):
        P = 3 if cell == "lstm_proj" else H
        args = list(_lstm_args(D, T, B, H, P, cell == "lstm_proj", lengths, False, device))
        op = torch.ops.recgen.lstm_fwd
    elif cell == "gru":
        args = [rnd(T, B, D * 3 * H, device=device), rnd(D, B, H, device=device),
                rnd(D, 3 * H, H, device=device) * 0.3, rnd(D, 3 * H, device=device), lengths, False, True]
        op = torch.ops.recgen.gru_fwd
    else:
        args = [rnd(T, B, D * H, device=device), rnd(D, B, H, device=device), rnd(D, H, H, device=device) * 0.3,
                lengths, True, "tanh", True]
        op = torch.ops.recgen.rnn_fwd
    full = op(*args)
    args[-1] = False
    name = "lstm_fwd" if cell.startswith("lstm") else f"{cell}_fwd"
    before = dict(LAUNCH_COUNTS)
    lean = op(*args)
    assert LAUNCH_COUNTS[name] == before.get(name, 0) + 1
    n_state = 3 if cell.startswith("lstm") else 2
    for a, b in zip(lean[:n_state], full[:n_state]):
        assert torch.equal(a, b)
    saved = lean[n_state:n_state + 2] if cell.startswith("lstm") else lean[n_state:]
    assert all(t.numel() == 0 for t in saved)
    torch.library.opcheck(op, tuple(args))


def test_backward_without_saved_tensors_says_why(device):
    from recgen.ops.recurrent.lstm import LSTMFunction

    args = _leaf(_lstm_args(1, 2, 2, 3, 3, False, None, True, device)[:-1] + (False,))
    y = LSTMFunction.apply(*args)[0]
    with pytest.raises(RuntimeError, match="save=False"):
        y.sum().backward()


def test_registration_kind():
    """Interpreted kernels cannot be traced with fake tensors, so the CPU build registers custom_ops."""
    from recgen.backend import interpreting

    if interpreting():
        assert library.kind() == "custom_op"
    else:
        assert library.kind() == ("triton_op" if hasattr(torch.library, "triton_op") else "custom_op")


def test_registration_falls_back_to_custom_op_without_triton_op(monkeypatch):
    """A torch without torch.library.triton_op (before 2.6) gets custom_ops."""
    monkeypatch.delattr(torch.library, "triton_op")
    assert library.registration_kind() == "custom_op"


RECURRENT_OPS = {"lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd", "rnn_fwd", "rnn_bwd"}


def test_triton_op_registration_traces_every_kernel():
    """Without the interpreter (as on a GPU) the ops are triton_ops whose launchers torch.compile
    traces: every op's kernels appear in the functionalised graph (tests/scripts/trace_triton_ops.py)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(os.path.dirname(__file__), "scripts", "trace_triton_ops.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    kernels = dict(line.split() for line in done.stdout.splitlines())
    assert RECURRENT_OPS <= set(kernels)
    assert all(int(n) >= 1 for n in kernels.values()), kernels


def test_import_does_not_import_triton():
    """No work at import time: Triton is imported when an op first registers."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import sys, recgen, recgen.nn, recgen.functional\nassert 'triton' not in sys.modules, 'triton imported'\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_check_without_cuda_runs_again_under_the_interpreter(monkeypatch):
    """`recgen check` and `recgen bench` on a machine without CUDA start themselves again with
    TRITON_INTERPRET=1 (the interpreter cannot be turned on once Triton has decorated the
    kernels); the child's exit status is the command's."""
    from recgen import cli

    started = []
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(subprocess, "run", lambda cmd, env: started.append((cmd, env)) or
                        subprocess.CompletedProcess(cmd, 3))
    assert cli.main(["check", "--dtype", "fp32"]) == 3
    (cmd, env), = started
    assert cmd == [sys.executable, "-m", "recgen", "check", "--dtype", "fp32"] and env["TRITON_INTERPRET"] == "1"
    assert env["PYTHONSAFEPATH"] == "1"


# --------------------------------------------------------------------------- torch.compile

class Generator(torch.nn.Module):
    """A row-by-row image generator of the kind recgen is used in: every recurrent module type."""

    def __init__(self):
        super().__init__()
        self.lstm = recgen.nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3, batch_first=True)
        self.gru = recgen.nn.GRU(6, 5)
        self.rnn = recgen.nn.RNN(5, 4, nonlinearity="relu", bidirectional=True)
        self.cell = recgen.nn.LSTMCell(8, 3)
        self.gcell = recgen.nn.GRUCell(3, 3, bias=False)
        self.rcell = recgen.nn.RNNCell(3, 2)

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        y, h = self.gru(y.transpose(0, 1))
        y, h = self.rnn(y)
        hc = self.cell(y[-1])
        g = self.gcell(hc[0])
        return torch.tanh(self.rcell(g)).sum() + y.square().mean() + h.sum() + c.sum()


def _grads(model, x):
    return [x.grad] + [p.grad for p in model.parameters()]


def _run(model, x):
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    loss = model(x)
    loss.backward()
    return loss.detach(), _grads(model, x)


def test_compile_fullgraph_matches_eager(device):
    torch.manual_seed(0)
    model = Generator().to(device)
    x = rnd(3, 4, 4, device=device)
    loss_eager, grads_eager = _run(model, x)
    compiled = torch.compile(model, fullgraph=True, backend=BACKEND)
    before = dict(LAUNCH_COUNTS)
    loss_c, grads_c = _run(compiled, x)
    launched = {k for k, v in LAUNCH_COUNTS.items() if v != before.get(k, 0)}
    assert {"lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd", "rnn_fwd", "rnn_bwd"} <= launched
    assert max_rel_error(loss_c, loss_eager) <= TOL
    for a, b in zip(grads_c, grads_eager):
        assert max_rel_error(a, b) <= TOL


def test_compile_no_grad_and_eval(device):
    """Inference under torch.no_grad, dropout between layers off in eval: same as eager."""
    torch.manual_seed(1)
    model = recgen.nn.LSTM(4, 5, num_layers=2, dropout=0.5).to(device).eval()
    x = rnd(5, 2, 4, device=device)
    compiled = torch.compile(model, fullgraph=True, backend=BACKEND)
    with torch.no_grad():
        (y, (h, c)), (yc, (hc, cc)) = model(x), compiled(x)
    for a, b in ((yc, y), (hc, h), (cc, c)):
        assert max_rel_error(a, b) <= TOL


def test_compile_inductor_cpu():
    """Inductor's own code generation around the opaque ops (C++ on the CPU)."""
    if CUDA:
        pytest.skip("covered on CUDA by the other compile tests")
    torch.manual_seed(2)
    model = recgen.nn.GRU(3, 4, batch_first=True)
    x = rnd(2, 3, 3)
    loss_eager, grads_eager = _run_sum(model, x)
    loss_c, grads_c = _run_sum(torch.compile(model, fullgraph=True, backend="inductor"), x)
    assert max_rel_error(loss_c, loss_eager) <= TOL
    for a, b in zip(grads_c, grads_eager):
        assert max_rel_error(a, b) <= TOL


def _run_sum(model, x):
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    y, h = model(x)
    loss = (y * torch.linspace(-1, 1, y.shape[-1])).sum() + h.sum()
    loss.backward()
    return loss.detach(), [x.grad] + [p.grad for p in model.parameters()]


def test_compile_before_any_eager_call_in_a_fresh_process():
    """Compiling a converted torch model first thing (ops registered on import, allow_rnn set by
    convert) must not break the graph."""
    code = (
        "import torch, recgen\n"
        "m = recgen.convert(torch.nn.Sequential(torch.nn.LSTM(3, 4)))\n"
        "out = torch.compile(m, fullgraph=True, backend='aot_eager')(torch.randn(2, 1, 3))\n"
        "assert out[0].shape == (2, 1, 4)\n"
        "print('ok', recgen.ops.LAUNCH_COUNTS['lstm_fwd'])\n"
    )
    env = dict(os.environ)
    if not CUDA:
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ok", "1"]


# --------------------------------------------------------------------------- wrappers

def test_data_parallel_and_ddp_single_process(device, tmp_path):
    """DataParallel and DistributedDataParallel (one process, gloo on the CPU, nccl on CUDA)
    around a converted model: same loss and gradients as the bare model."""
    import torch.distributed as dist

    torch.manual_seed(3)
    model = recgen.convert(torch.nn.Sequential(torch.nn.LSTM(3, 4))).to(device)
    x = rnd(4, 2, 3, device=device)

    def loss_and_grads(m):
        m.zero_grad(set_to_none=True)
        loss = m(x)[0].square().sum()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    ref = loss_and_grads(model)
    dp = loss_and_grads(torch.nn.DataParallel(model))
    dist.init_process_group("nccl" if CUDA else "gloo", init_method=f"file://{tmp_path}/pg",
                            rank=0, world_size=1)
    try:
        ddp = loss_and_grads(torch.nn.parallel.DistributedDataParallel(model))
    finally:
        dist.destroy_process_group()
    for other in (dp, ddp):
        assert max_rel_error(other[0], ref[0]) <= TOL
        for a, b in zip(other[1], ref[1]):
            assert max_rel_error(a, b) <= TOL


def test_compile_packed_sequence_matches_eager(device):
    """A PackedSequence's batch sizes are data (a CPU tensor), so torch.compile breaks the graph
    at the packing, as it does for torch.nn's RNNs; the compiled result equals eager's."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(4)
    model = recgen.nn.GRU(3, 4, bidirectional=True).to(device)
    lengths = torch.tensor([5, 3, 2])

    def loss(x):
        out, h = model(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return out.data.square().sum() + h.sum()

    x = rnd(5, 3, 3, device=device)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager = loss(xe)
    eager.backward()
    compiled = torch.compile(loss, backend=BACKEND)(xc)
    compiled.backward()
    assert max_rel_error(compiled, eager) <= TOL
    assert max_rel_error(xc.grad, xe.grad) <= TOL
