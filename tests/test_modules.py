"""recgen.nn modules against torch.nn modules holding the same state_dict: every output, final
state and gradient (input, h0, c0, each parameter by name), and proof that the Triton path ran
(kernel launch counts). The torch module is the ground truth here; both run in float32."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import recgen
from recgen.ops import LAUNCH_COUNTS
from recgen.testing import TOLERANCES, max_rel_error

DTYPE = torch.float32
TOL = TOLERANCES[DTYPE]
I = 4  # input features in every case
# torch's CPU LSTM with proj_size falls back from oneDNN to its default kernel and says so.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


# kind -> (class name, extra constructor kwargs, launch-name family)
KINDS = {
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}, "rnn"),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}, "rnn"),
    "gru": ("GRU", {}, "gru"),
    "lstm": ("LSTM", {}, "lstm"),
}


# --------------------------------------------------------------------------- helpers

def launch_snapshot():
    return dict(LAUNCH_COUNTS)


def launches_since(before):
    """{kernel name: launches since `before`}, only names that changed."""
    return {k: v - before.get(k, 0) for k, v in LAUNCH_COUNTS.items() if v != before.get(k, 0)}


def assert_close(name, actual, expected):
    assert actual is not None, f"{name}: missing"
    err = max_rel_error(actual, expected)
    assert err <= TOL, f"{name}: max relative error {err:.3g} > {TOL:g}"


def build_pair(kind, device, **kw):
    """A torch.nn module and a recgen.nn module with the same constructor args and state_dict."""
    cls, extra, _ = KINDS[kind]
    kw = {**extra, **kw}
    ref = getattr(nn, cls)(**kw).to(device)
    rec = getattr(recgen.nn, cls)(**kw).to(device)
    rec.load_state_dict(ref.state_dict())
    return ref, rec


def leaf(t):
    return t.detach().clone().requires_grad_()


def case_id(kind, c):
    parts = [kind.replace("_", "-"), f"L{c.get('num_layers', 1)}"]
    if c.get("bidirectional"):
        parts.append("bi")
    parts += [] if c.get("unbatched") else [f"B{c['B']}"]
    parts += [f"T{c['T']}", f"H{c['H']}"]
    for flag, tag in [("batch_first", "bf"), ("unbatched", "unbatched"), ("hx", "hx"),
                      ("packed", "packed"), ("sorted", "sorted")]:
        if c.get(flag):
            parts.append(tag)
    if c.get("bias") is False:
        parts.append("nobias")
    if c.get("proj_size"):
        parts.append(f"proj{c['proj_size']}")
    if c.get("dropout"):
        parts.append("drop-eval")
    return "-".join(parts)


BASE_CASES = [
    dict(B=3, T=5, H=13),                                                   # default
    dict(B=3, T=5, H=13, num_layers=2, bidirectional=True),
    dict(B=3, T=5, H=13, batch_first=True, bidirectional=True),
    dict(B=3, T=5, H=13, batch_first=True, hx=True),
    dict(B=1, T=4, H=13, unbatched=True),
    dict(B=1, T=4, H=13, unbatched=True, hx=True, num_layers=2, bidirectional=True),
    dict(B=1, T=4, H=13, unbatched=True, batch_first=True, hx=True),
    dict(B=3, T=5, H=13, bias=False, bidirectional=True),
    dict(B=1, T=1, H=13),
    dict(B=1, T=1, H=5, hx=True, bidirectional=True),
    dict(B=3, T=5, H=13, hx=True),
    dict(B=3, T=5, H=13, hx=True, num_layers=2, bidirectional=True),
    dict(B=3, T=5, H=13, packed=True, lengths=[5, 2, 4], bidirectional=True),
    dict(B=3, T=5, H=13, packed=True, lengths=[5, 2, 4], num_layers=2, bidirectional=True, hx=True),
    dict(B=4, T=5, H=7, packed=True, lengths=[2, 5, 1, 3], hx=True),
    dict(B=3, T=5, H=13, packed=True, sorted=True, lengths=[5, 4, 2], bidirectional=True),
    dict(B=3, T=5, H=13, dropout=0.5, num_layers=2),                        # eval mode
]
LSTM_CASES = [
    dict(B=3, T=5, H=13, proj_size=6),
    dict(B=3, T=5, H=13, proj_size=6, num_layers=2, bidirectional=True),
    dict(B=3, T=5, H=13, proj_size=6, num_layers=2, bidirectional=True, hx=True),
    dict(B=3, T=5, H=13, proj_size=5, packed=True, lengths=[5, 2, 4], bidirectional=True,
         hx=True),
    dict(B=1, T=4, H=13, proj_size=3, unbatched=True, hx=True, bidirectional=True),
]
MODULE_CASES = [pytest.param(kind, c, id=case_id(kind, c))
                for kind in KINDS for c in BASE_CASES + (LSTM_CASES if kind == "lstm" else [])]

CTOR_KEYS = ("num_layers", "bidirectional", "batch_first", "bias", "proj_size", "dropout")


def make_inputs(kind, c, device):
    """x (the padded input, in the module's layout) and the initial states, or None."""
    L, D = c.get("num_layers", 1), 2 if c.get("bidirectional") else 1
    B, T, H = c["B"], c["T"], c["H"]
    P = c.get("proj_size") or H
    if c.get("unbatched"):
        x = torch.randn(T, I, device=device)
    elif c.get("batch_first") and not c.get("packed"):
        x = torch.randn(B, T, I, device=device)
    else:
        x = torch.randn(T, B, I, device=device)
    if not c.get("hx"):
        return x, None
    state_batch = () if c.get("unbatched") else (B,)
    h0 = torch.randn(L * D, *state_batch, P, device=device)
    if kind == "lstm":
        return x, (h0, torch.randn(L * D, *state_batch, H, device=device))
    return x, h0


def run_module(module, c, x, hx):
    """Forward `module` on fresh leaves of x and hx; returns (leaves, flat outputs, raw output)."""
    xl = leaf(x)
    hl = None if hx is None else (tuple(leaf(h) for h in hx) if isinstance(hx, tuple) else leaf(hx))
    inp = xl
    if c.get("packed"):
        inp = pack_padded_sequence(xl, torch.tensor(c["lengths"]),
                                   enforce_sorted=bool(c.get("sorted")))
    out, hidden = module(inp) if hl is None else module(inp, hl)
    flat = [out.data if isinstance(out, PackedSequence) else out]
    flat += list(hidden) if isinstance(hidden, tuple) else [hidden]
    leaves = {"input": xl}
    if hl is not None:
        for name, h in zip(("h0", "c0"), hl if isinstance(hl, tuple) else (hl,)):
            leaves[name] = h
    return leaves, flat, out


# --------------------------------------------------------------------------- modules vs torch

@pytest.mark.parametrize("kind,c", MODULE_CASES)
def test_module_matches_torch(kind, c, device):
    torch.manual_seed(0)
    ctor = {k: c[k] for k in CTOR_KEYS if k in c}
    ref, rec = build_pair(kind, device, input_size=I, hidden_size=c["H"], **ctor)
    ref.eval()
    rec.eval()
    x, hx = make_inputs(kind, c, device)
    launches = c.get("num_layers", 1)  # one launch per layer: both directions share it
    family = KINDS[kind][2]

    ref_leaves, ref_outs, ref_raw = run_module(ref, c, x, hx)
    before = launch_snapshot()
    rec_leaves, rec_outs, rec_raw = run_module(rec, c, x, hx)
    assert launches_since(before) == {f"{family}_fwd": launches}

    names = ["output", "h_n", "c_n"][:len(ref_outs)]
    assert len(rec_outs) == len(ref_outs)
    for name, a, b in zip(names, rec_outs, ref_outs):
        assert a.dtype == b.dtype, name
        assert_close(name, a, b)
    if c.get("packed"):
        assert isinstance(rec_raw, PackedSequence)
        assert torch.equal(rec_raw.batch_sizes, ref_raw.batch_sizes)
        for attr in ("sorted_indices", "unsorted_indices"):
            a, b = getattr(rec_raw, attr), getattr(ref_raw, attr)
            assert (a is None and b is None) or torch.equal(a, b), attr

    grads = [torch.randn_like(o) for o in ref_outs]
    torch.autograd.backward(ref_outs, grads)
    before = launch_snapshot()
    torch.autograd.backward(rec_outs, grads)
    assert launches_since(before) == {f"{family}_bwd": launches}

    assert rec_leaves.keys() == ref_leaves.keys()
    for name in ref_leaves:
        assert_close(f"d{name}", rec_leaves[name].grad, ref_leaves[name].grad)
    ref_params = dict(ref.named_parameters())
    rec_params = dict(rec.named_parameters())
    assert rec_params.keys() == ref_params.keys()
    for name, p in ref_params.items():
        assert_close(f"d{name}", rec_params[name].grad, p.grad)


@pytest.mark.parametrize("kind", [pytest.param(k, id=k.replace("_", "-")) for k in KINDS])
def test_dropout_in_training_mode(kind, device):
    """Dropout between layers in train mode: shapes right, and it changes the output (torch's
    RNG stream is not compared)."""
    torch.manual_seed(1)
    _, rec = build_pair(kind, device, input_size=I, hidden_size=13, num_layers=2, dropout=0.5,
                        bidirectional=True)
    x = torch.randn(5, 3, I, device=device)
    rec.eval()
    y_eval, h_eval = rec(x)
    rec.train()
    before = launch_snapshot()
    y_train, h_train = rec(x)
    assert launches_since(before) == {f"{KINDS[kind][2]}_fwd": 2}  # 2 layers, both directions per launch
    assert y_train.shape == y_eval.shape == (5, 3, 26)
    h_train = h_train if isinstance(h_train, tuple) else (h_train,)
    h_eval = h_eval if isinstance(h_eval, tuple) else (h_eval,)
    for a, b in zip(h_train, h_eval):
        assert a.shape == b.shape == (4, 3, 13)
        # layer 0 sees no dropout: its final states agree between modes
        assert_close("h_n layer 0", a[:2], b[:2])
    assert torch.isfinite(y_train).all()
    assert max_rel_error(y_train, y_eval) > 1e-2
    assert max_rel_error(h_train[0][2:], h_eval[0][2:]) > 1e-2


# --------------------------------------------------------------------------- cells

CELL_KINDS = {
    "rnncell-tanh": ("RNNCell", {"nonlinearity": "tanh"}, "rnn"),
    "rnncell-relu": ("RNNCell", {"nonlinearity": "relu"}, "rnn"),
    "grucell": ("GRUCell", {}, "gru"),
    "lstmcell": ("LSTMCell", {}, "lstm"),
}
CELL_CASES = [
    dict(B=5, H=13, hx=True),
    dict(B=1, H=13, hx=True),
    dict(B=5, H=13, hx=False),
    dict(B=None, H=13, hx=True),     # unbatched 1-D input
    dict(B=None, H=7, hx=False),
    dict(B=3, H=13, hx=True, bias=False),
    dict(B=None, H=6, hx=True, bias=False),
]


def cell_id(kind, c):
    parts = [kind, "unbatched" if c["B"] is None else f"B{c['B']}", f"H{c['H']}",
             "hx" if c["hx"] else "nohx"]
    if c.get("bias") is False:
        parts.append("nobias")
    return "-".join(parts)


@pytest.mark.parametrize("kind,c", [pytest.param(k, c, id=cell_id(k, c))
                                    for k in CELL_KINDS for c in CELL_CASES])
def test_cell_matches_torch(kind, c, device):
    torch.manual_seed(2)
    cls, extra, family = CELL_KINDS[kind]
    kw = dict(input_size=I, hidden_size=c["H"], bias=c.get("bias", True), **extra)
    ref = getattr(nn, cls)(**kw).to(device)
    rec = getattr(recgen.nn, cls)(**kw).to(device)
    rec.load_state_dict(ref.state_dict())
    batch = () if c["B"] is None else (c["B"],)
    x = torch.randn(*batch, I, device=device)
    hx = None
    if c["hx"]:
        hx = torch.randn(*batch, c["H"], device=device)
        if cls == "LSTMCell":
            hx = (hx, torch.randn(*batch, c["H"], device=device))

    def run(module):
        xl = leaf(x)
        hl = None if hx is None else (tuple(leaf(h) for h in hx) if isinstance(hx, tuple)
                                      else leaf(hx))
        out = module(xl) if hl is None else module(xl, hl)
        outs = list(out) if isinstance(out, tuple) else [out]
        leaves = {"input": xl}
        if hl is not None:
            for name, h in zip(("h0", "c0"), hl if isinstance(hl, tuple) else (hl,)):
                leaves[name] = h
        return leaves, outs

    ref_leaves, ref_outs = run(ref)
    before = launch_snapshot()
    rec_leaves, rec_outs = run(rec)
    assert launches_since(before) == {f"{family}_fwd": 1}
    assert len(rec_outs) == len(ref_outs)
    for name, a, b in zip(("h", "c"), rec_outs, ref_outs):
        assert a.shape == b.shape, name
        assert_close(name, a, b)

    grads = [torch.randn_like(o) for o in ref_outs]
    torch.autograd.backward(ref_outs, grads)
    before = launch_snapshot()
    torch.autograd.backward(rec_outs, grads)
    assert launches_since(before) == {f"{family}_bwd": 1}
    for name in ref_leaves:
        assert_close(f"d{name}", rec_leaves[name].grad, ref_leaves[name].grad)
    ref_params = dict(ref.named_parameters())
    rec_params = dict(rec.named_parameters())
    assert rec_params.keys() == ref_params.keys()
    for name, p in ref_params.items():
        assert_close(f"d{name}", rec_params[name].grad, p.grad)


# --------------------------------------------------------------------------- drop-in contract

ALL_CLASSES = ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell"]


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_subclass_and_exports(cls):
    module = getattr(recgen.nn, cls)(3, 5)
    assert isinstance(module, getattr(nn, cls))
    assert getattr(recgen, cls) is getattr(recgen.nn, cls)
    assert type(module).__name__ == cls


@pytest.mark.parametrize("cls,kw", [
    pytest.param("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3), id="lstm-proj"),
    pytest.param("LSTM", dict(bias=False, batch_first=True), id="lstm-nobias"),
    pytest.param("GRU", dict(num_layers=2, bidirectional=True), id="gru"),
    pytest.param("RNN", dict(nonlinearity="relu", num_layers=3), id="rnn-relu"),
    pytest.param("RNNCell", dict(bias=False), id="rnncell"),
    pytest.param("GRUCell", dict(), id="grucell"),
    pytest.param("LSTMCell", dict(), id="lstmcell"),
])
def test_parameters_and_state_dict_match_torch(cls, kw):
    torch.manual_seed(3)
    ref = getattr(nn, cls)(4, 7, **kw)
    rec = getattr(recgen.nn, cls)(4, 7, **kw)
    assert [(n, p.shape) for n, p in rec.named_parameters()] == \
        [(n, p.shape) for n, p in ref.named_parameters()]
    assert list(rec.state_dict().keys()) == list(ref.state_dict().keys())
    assert {k: v.shape for k, v in rec.state_dict().items()} == \
        {k: v.shape for k, v in ref.state_dict().items()}


def test_torch_checkpoint_loads(tmp_path, device):
    torch.manual_seed(4)
    ref = nn.LSTM(I, 9, num_layers=2, bidirectional=True, proj_size=4).to(device)
    path = tmp_path / "lstm.pt"
    torch.save(ref.state_dict(), path)
    rec = recgen.nn.LSTM(I, 9, num_layers=2, bidirectional=True, proj_size=4).to(device)
    result = rec.load_state_dict(torch.load(path, map_location=device))
    assert not result.missing_keys and not result.unexpected_keys
    for name, p in ref.named_parameters():
        assert torch.equal(dict(rec.named_parameters())[name], p), name
    x = torch.randn(4, 2, I, device=device)
    with torch.no_grad():
        y_ref, (h_ref, c_ref) = ref(x)
        before = launch_snapshot()
        y, (h, c) = rec(x)
    assert launches_since(before) == {"lstm_fwd": 2}  # 2 layers, both directions per launch
    assert_close("output", y, y_ref)
    assert_close("h_n", h, h_ref)
    assert_close("c_n", c, c_ref)


def test_flatten_parameters_runs_and_keeps_results(device):
    torch.manual_seed(5)
    ref, rec = build_pair("gru", device, input_size=I, hidden_size=11, num_layers=2)
    rec.flatten_parameters()
    x = torch.randn(3, 2, I, device=device)
    with torch.no_grad():
        y, h = rec(x)
        y_ref, h_ref = ref(x)
    assert_close("output", y, y_ref)
    assert_close("h_n", h, h_ref)


def test_deepcopy_keeps_class_and_results(device):
    torch.manual_seed(6)
    ref, rec = build_pair("lstm", device, input_size=I, hidden_size=6)
    dup = copy.deepcopy(rec)
    assert type(dup) is recgen.nn.LSTM
    x = torch.randn(3, 2, I, device=device)
    with torch.no_grad():
        before = launch_snapshot()
        y = dup(x)[0]
        assert launches_since(before) == {"lstm_fwd": 1}
        assert_close("output", y, ref(x)[0])


def test_nan_in_input_propagates_like_torch(device):
    torch.manual_seed(7)
    ref, rec = build_pair("lstm", device, input_size=I, hidden_size=13, bidirectional=True)
    x = torch.randn(5, 3, I, device=device)
    x[2, 1, 0] = float("nan")
    ref_leaves, ref_outs, _ = run_module(ref, {}, x, None)
    rec_leaves, rec_outs, _ = run_module(rec, {}, x, None)
    grads = [torch.randn_like(o) for o in ref_outs]
    torch.autograd.backward(ref_outs, grads)
    torch.autograd.backward(rec_outs, grads)
    pairs = [(n, a, b) for n, a, b in zip(("output", "h_n", "c_n"), rec_outs, ref_outs)]
    pairs.append(("dinput", rec_leaves["input"].grad, ref_leaves["input"].grad))
    for name, a, b in pairs:
        assert b.isnan().any(), f"{name}: the case must put NaN somewhere"
        assert torch.equal(a.isnan(), b.isnan()), f"{name}: NaN positions differ from torch"
        finite = ~b.isnan()
        assert_close(f"{name} (non-NaN part)", a[finite], b[finite])
    # batch row 0 and 2 never meet the NaN in the forward pass
    assert not rec_outs[0][:, [0, 2]].isnan().any()


@pytest.mark.parametrize("kind", [pytest.param(k, id=k.replace("_", "-")) for k in KINDS])
def test_reference_backend_matches_with_no_launches(kind, device):
    torch.manual_seed(8)
    ref, rec = build_pair(kind, device, input_size=I, hidden_size=9, num_layers=2,
                          bidirectional=True)
    c = dict(B=3, T=4, H=9, num_layers=2, bidirectional=True, hx=True)
    x, hx = make_inputs(kind, c, device)
    ref_leaves, ref_outs, _ = run_module(ref, c, x, hx)
    recgen.set_backend("reference")
    before = launch_snapshot()
    rec_leaves, rec_outs, _ = run_module(rec, c, x, hx)
    grads = [torch.randn_like(o) for o in ref_outs]
    torch.autograd.backward(ref_outs, grads)
    torch.autograd.backward(rec_outs, grads)
    assert launches_since(before) == {}
    for name, a, b in zip(("output", "h_n", "c_n"), rec_outs, ref_outs):
        assert_close(name, a, b)
    for name in ref_leaves:
        assert_close(f"d{name}", rec_leaves[name].grad, ref_leaves[name].grad)
    ref_params = dict(ref.named_parameters())
    for name, p in rec.named_parameters():
        assert_close(f"d{name}", p.grad, ref_params[name].grad)


def test_cell_reference_backend_launches_nothing(device):
    torch.manual_seed(9)
    ref = nn.LSTMCell(I, 5).to(device)
    rec = recgen.nn.LSTMCell(I, 5).to(device)
    rec.load_state_dict(ref.state_dict())
    recgen.set_backend("reference")
    x = torch.randn(2, I, device=device)
    before = launch_snapshot()
    h, c = rec(x)
    assert launches_since(before) == {}
    h_ref, c_ref = ref(x)
    assert_close("h", h, h_ref)
    assert_close("c", c, c_ref)
