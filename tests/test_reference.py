"""The pure-PyTorch reference against torch.nn (copied weights): cells, whole directions, packed
sequences, every gradient, and float64 gradcheck. The reference is never compared to itself."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from recgen.reference import gru_cell, lstm_cell, recurrent_direction, rnn_cell

DTYPES = {"fp64": torch.float64, "fp32": torch.float32}
# Both sides run the same math in the same dtype; only summation order differs.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
}
CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
# torch's CPU LSTM with proj_size falls back from oneDNN to its default kernel and says so.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


def proj_size(H):
    """A projection size smaller than H (torch requires proj_size < hidden_size)."""
    return max(1, H // 2)


def torch_module(cell, I, H, *, bias=True, proj=0, bidirectional=False, dtype=torch.float64):
    """Single-layer, time-major torch.nn.LSTM/GRU/RNN with torch's own random init."""
    kw = dict(bias=bias, bidirectional=bidirectional, dtype=dtype)
    if cell == "lstm":
        return nn.LSTM(I, H, proj_size=proj, **kw)
    assert proj == 0, "only LSTM projects"
    if cell == "gru":
        return nn.GRU(I, H, **kw)
    return nn.RNN(I, H, nonlinearity=cell[len("rnn_"):], **kw)


def torch_cell(cell, I, H, *, bias=True, dtype=torch.float64):
    if cell == "lstm":
        return nn.LSTMCell(I, H, bias=bias, dtype=dtype)
    if cell == "gru":
        return nn.GRUCell(I, H, bias=bias, dtype=dtype)
    return nn.RNNCell(I, H, bias=bias, nonlinearity=cell[len("rnn_"):], dtype=dtype)


def weights(module, tag=""):
    """A torch module's parameters as the reference's keyword arguments.

    tag: '' for *Cell modules, '_l0' / '_l0_reverse' for layer 0 of RNN modules. Missing biases
    (bias=False) become None; w_hr is present only when the module projects.
    """
    w = {k: getattr(module, n + tag, None) for k, n in
         [("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh")]}
    if hasattr(module, "weight_hr" + tag):
        w["w_hr"] = getattr(module, "weight_hr" + tag)
    return w


def check(name, actual, expected, dtype):
    torch.testing.assert_close(actual, expected, **TOL[dtype], msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------
# 1. Single cells vs torch.nn.*Cell (and nn.LSTM with proj_size at T=1 for the projection)

def cell_params():
    out = []
    for cell in CELLS + ["lstmp"]:
        for B, I, H in [(3, 5, 20), (1, 1, 13)]:
            for bias in (True, False):
                out.append(pytest.param(cell, B, I, H, bias, "fp64",
                                        id=f"{cell}-B{B}-I{I}-H{H}-fp64-{'bias' if bias else 'nobias'}"))
    out.append(pytest.param("lstm", 4, 6, 24, True, "fp32", id="lstm-B4-I6-H24-fp32-bias"))
    out.append(pytest.param("lstmp", 2, 3, 10, True, "fp32", id="lstmp-B2-I3-H10-fp32-bias"))
    return out


@pytest.mark.parametrize("cell, B, I, H, bias, dt", cell_params())
def test_cell_matches_torch(cell, B, I, H, bias, dt):
    torch.manual_seed(0)
    dtype = DTYPES[dt]
    P = proj_size(H) if cell == "lstmp" else H
    x, h, c = (torch.randn(B, n, dtype=dtype) for n in (I, P, H))
    if cell == "lstmp":
        mod = torch_module("lstm", I, H, bias=bias, proj=P, dtype=dtype)
        w = weights(mod, "_l0")
        assert w["w_hr"].shape == (P, H)
        _, (h_n, c_n) = mod(x[None], (h[None], c[None]))
        expected = (h_n[0], c_n[0])
    else:
        mod = torch_cell(cell, I, H, bias=bias, dtype=dtype)
        w = weights(mod)
        expected = mod(x, (h, c)) if cell == "lstm" else mod(x, h)
    assert (w["b_ih"] is None) == (not bias)
    with torch.no_grad():
        if cell in ("lstm", "lstmp"):
            got = lstm_cell(x, h, c, **w)
        elif cell == "gru":
            got = gru_cell(x, h, **w)
        else:
            got = rnn_cell(x, h, **w, nonlinearity=cell[len("rnn_"):])
    if cell in ("lstm", "lstmp"):
        check("h", got[0], expected[0], dtype)
        check("c", got[1], expected[1], dtype)
    else:
        check("h", got, expected, dtype)


# ---------------------------------------------------------------------------------------------
# 2./3. Whole directions vs torch.nn modules: outputs, final states and every gradient

def compare_direction(cell, B, T, I, H, *, proj=0, bias=True, reverse=False, lengths=None,
                      dtype=torch.float64):
    """Run torch.nn and the reference on the same data and weights; compare y, h_n, c_n and the
    gradients of a random upstream gradient on all of them w.r.t. x, h0, c0 and every weight.

    reverse=True uses the reverse half of a bidirectional module (its forward half gets zero
    upstream gradient). lengths (list) feeds torch a pack_padded_sequence(enforce_sorted=False).
    """
    mod = torch_module(cell, I, H, bias=bias, proj=proj, bidirectional=reverse, dtype=dtype)
    w = weights(mod, "_l0_reverse" if reverse else "_l0")
    P = proj or H
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = torch.randn(B, P, dtype=dtype, requires_grad=True)
    c0 = torch.randn(B, H, dtype=dtype, requires_grad=True) if cell == "lstm" else None

    # torch: the direction under test is slot d of the state and feature block d of y.
    d = int(reverse)
    other = [torch.zeros(1, B, P, dtype=dtype)] if reverse else []
    hx = torch.cat(other + [h0[None]])
    if cell == "lstm":
        hx = (hx, torch.cat([torch.zeros(1, B, H, dtype=dtype)] * d + [c0[None]]))
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, state = mod(inp, hx)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=T)
    h_n, c_n = state if cell == "lstm" else (state, None)
    expected = [out[..., d * P:(d + 1) * P], h_n[d]] + ([c_n[d]] if cell == "lstm" else [])

    L = None if lengths is None else torch.tensor(lengths)
    y, h, c = recurrent_direction(cell, x, h0, c0, **w, lengths=L, reverse=reverse)
    assert (c is None) == (cell != "lstm")
    got = [y, h] + ([c] if cell == "lstm" else [])
    for name, a, e in zip(["y", "h_n", "c_n"], got, expected):
        check(name, a, e, dtype)
    if L is not None:
        pad = torch.arange(T)[:, None] >= L[None, :]
        assert pad.any(), "lengths should leave some padding"
        assert torch.all(y[pad] == 0), "padding outputs must be exactly zero"

    upstream = [torch.randn_like(e) for e in expected]
    named = {"x": x, "h0": h0, "c0": c0, **w}
    named = {k: v for k, v in named.items() if v is not None}
    grads_e = torch.autograd.grad(expected, list(named.values()), upstream)
    grads_a = torch.autograd.grad(got, list(named.values()), upstream)
    for name, a, e in zip(named, grads_a, grads_e):
        check(f"d{name}", a, e, dtype)


def variants():
    """(cell, proj?) pairs: every cell, plus the projected LSTM."""
    return [(c, False) for c in CELLS] + [("lstm", True)]


def vid(cell, proj):
    return "lstmp" if proj else cell


SIZES = [(3, 7, 5, 20), (1, 1, 3, 5), (2, 4, 6, 13), (4, 3, 1, 16)]  # (B, T, I, H)


def direction_params():
    out = []
    for cell, proj in variants():
        for B, T, I, H in SIZES:
            for reverse in (False, True):
                out.append(pytest.param(
                    cell, proj, B, T, I, H, True, reverse,
                    id=f"{vid(cell, proj)}-B{B}-T{T}-H{H}-fp64-{'rev' if reverse else 'fwd'}"))
        out.append(pytest.param(cell, proj, 2, 3, 4, 7, False, False,
                                id=f"{vid(cell, proj)}-B2-T3-H7-fp64-fwd-nobias"))
        out.append(pytest.param(cell, proj, 2, 3, 4, 7, False, True,
                                id=f"{vid(cell, proj)}-B2-T3-H7-fp64-rev-nobias"))
    return out


@pytest.mark.parametrize("cell, proj, B, T, I, H, bias, reverse", direction_params())
def test_direction_matches_torch(cell, proj, B, T, I, H, bias, reverse):
    torch.manual_seed(1)
    compare_direction(cell, B, T, I, H, proj=proj_size(H) if proj else 0, bias=bias,
                      reverse=reverse)


def test_direction_fp32_matches_torch():
    torch.manual_seed(2)
    compare_direction("lstm", 3, 6, 5, 12, reverse=True, dtype=torch.float32)


PACKED = [([5, 2, 4, 1], 5, 4, 9), ([3], 6, 2, 5), ([1, 3, 2], 3, 3, 13)]  # (lengths, T, I, H)


def packed_params():
    out = []
    for cell, proj in variants():
        for lengths, T, I, H in PACKED:
            for reverse in (False, True):
                B = len(lengths)
                out.append(pytest.param(
                    cell, proj, lengths, T, I, H, reverse,
                    id=f"{vid(cell, proj)}-B{B}-T{T}-H{H}-fp64-{'rev' if reverse else 'fwd'}"
                       f"-L{''.join(map(str, lengths))}"))
    return out


@pytest.mark.parametrize("cell, proj, lengths, T, I, H, reverse", packed_params())
def test_packed_matches_torch(cell, proj, lengths, T, I, H, reverse):
    torch.manual_seed(3)
    compare_direction(cell, len(lengths), T, I, H, proj=proj_size(H) if proj else 0,
                      reverse=reverse, lengths=lengths)


# ---------------------------------------------------------------------------------------------
# 5. float64 gradcheck through the reference itself (numerical vs analytical)

GRADCHECK = [
    pytest.param("lstm", 0, None, False, id="lstm-B2-T3-H4-fp64"),
    pytest.param("gru", 0, None, False, id="gru-B2-T3-H4-fp64"),
    pytest.param("rnn_tanh", 0, None, False, id="rnn_tanh-B2-T3-H4-fp64"),
    pytest.param("rnn_relu", 0, None, False, id="rnn_relu-B2-T3-H4-fp64"),
    pytest.param("lstm", 2, None, False, id="lstmp-B2-T3-H4-fp64"),
    pytest.param("gru", 0, [3, 1], False, id="gru-B2-T3-H4-fp64-L31"),
    pytest.param("lstm", 0, [2, 3], True, id="lstm-B2-T3-H4-fp64-rev-L23"),
    pytest.param("rnn_tanh", 0, None, True, id="rnn_tanh-B2-T3-H4-fp64-rev"),
]


@pytest.mark.parametrize("cell, proj, lengths, reverse", GRADCHECK)
def test_gradcheck(cell, proj, lengths, reverse):
    torch.manual_seed(4)
    T, B, I, H = 3, 2, 3, 4
    P, G = proj or H, {"lstm": 4, "gru": 3}.get(cell, 1)

    def rand(*shape):
        return (0.5 * torch.randn(*shape, dtype=torch.float64)).requires_grad_()

    args = [rand(T, B, I), rand(B, P), rand(G * H, I), rand(G * H, P), rand(G * H), rand(G * H)]
    has_c, has_hr = cell == "lstm", bool(proj)
    args += [rand(B, H)] * has_c + [rand(P, H)] * has_hr
    L = None if lengths is None else torch.tensor(lengths)

    def fn(x, h0, w_ih, w_hh, b_ih, b_hh, *rest):
        c0 = rest[0] if has_c else None
        w_hr = rest[-1] if has_hr else None
        y, h, c = recurrent_direction(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr=w_hr,
                                      lengths=L, reverse=reverse)
        return (y, h, c) if has_c else (y, h)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# 6. Bad input raises

def test_unknown_cell_raises():
    torch.manual_seed(5)
    x, h0 = torch.randn(2, 1, 3), torch.randn(1, 4)
    with pytest.raises(ValueError, match="unknown cell 'lstmx'"):
        recurrent_direction("lstmx", x, h0, None, torch.randn(4, 3), torch.randn(4, 4))


def test_unknown_nonlinearity_raises():
    torch.manual_seed(6)
    x, h = torch.randn(1, 3), torch.randn(1, 4)
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        rnn_cell(x, h, torch.randn(4, 3), torch.randn(4, 4), nonlinearity="sigmoid")
