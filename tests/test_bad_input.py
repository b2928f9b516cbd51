"""Bad input to the recgen modules: each raises before any kernel launch, with torch.nn's
exception type (checked by running the same input through torch.nn) and a message naming the
argument. Also: unusual but valid input (non-contiguous views, NaN/Inf) behaves like torch."""

import pytest
import torch
from torch import nn

import recgen
from recgen.ops import LAUNCH_COUNTS
from recgen.testing import TOLERANCES, max_rel_error

TOL = TOLERANCES[torch.float32]
I, H = 4, 5
f64 = torch.float64


def lstm_hx(L, B, P=H, Hc=H, **kw):
    return (torch.zeros(L, B, P, **kw), torch.zeros(L, B, Hc))


# (id, class name, constructor kwargs, inputs builder, exception type, match)
MODULE_CASES = [
    ("lstm-input-1d", "LSTM", {}, lambda: (torch.randn(I),), ValueError,
     r"input.*2D or 3D.*got 1D"),
    ("lstm-input-4d", "LSTM", {}, lambda: (torch.randn(3, 2, I, 1),), ValueError,
     r"input.*2D or 3D.*got 4D"),
    ("gru-input-4d", "GRU", {}, lambda: (torch.randn(1, 3, 2, I),), ValueError, r"input.*got 4D"),
    ("rnn-input-1d", "RNN", {}, lambda: (torch.randn(I),), ValueError, r"input.*got 1D"),
    ("lstm-feature-size", "LSTM", {}, lambda: (torch.randn(3, 2, I + 1),), RuntimeError,
     "input_size"),
    ("gru-feature-size-bf", "GRU", {"batch_first": True}, lambda: (torch.randn(2, 3, I - 1),),
     RuntimeError, "input_size"),
    ("rnn-feature-size-unbatched", "RNN", {}, lambda: (torch.randn(3, I - 1),), RuntimeError,
     "input_size"),
    ("lstm-h0-shape", "LSTM", {}, lambda: (torch.randn(3, 2, I), lstm_hx(1, 2, P=H + 1)),
     RuntimeError, r"Expected hidden\[0\] size"),
    ("lstm-c0-shape", "LSTM", {}, lambda: (torch.randn(3, 2, I), lstm_hx(1, 2, Hc=H + 1)),
     RuntimeError, r"Expected hidden\[1\] size"),
    ("lstm-proj-h0-width", "LSTM", {"proj_size": 3}, lambda: (torch.randn(3, 2, I), lstm_hx(1, 2)),
     RuntimeError, r"Expected hidden\[0\] size"),
    ("lstm-h0-layers", "LSTM", {"num_layers": 2}, lambda: (torch.randn(3, 2, I), lstm_hx(1, 2)),
     RuntimeError, r"Expected hidden\[0\] size"),
    ("gru-h0-shape", "GRU", {"bidirectional": True},
     lambda: (torch.randn(3, 2, I), torch.zeros(1, 2, H)), RuntimeError, r"Expected hidden size"),
    ("lstm-h0-batch", "LSTM", {}, lambda: (torch.randn(3, 2, I), lstm_hx(1, 3)), RuntimeError,
     r"Expected hidden\[0\] size"),
    ("gru-h0-batch-bf", "GRU", {"batch_first": True},
     lambda: (torch.randn(2, 3, I), torch.zeros(1, 3, H)), RuntimeError, r"Expected hidden size"),
    ("rnn-h0-batch", "RNN", {}, lambda: (torch.randn(3, 2, I), torch.zeros(1, 1, H)),
     RuntimeError, r"Expected hidden size"),
    ("lstm-input-dtype", "LSTM", {}, lambda: (torch.randn(3, 2, I, dtype=f64),), ValueError,
     r"input dtype"),
    ("gru-input-dtype", "GRU", {}, lambda: (torch.randn(3, 2, I, dtype=f64),), ValueError,
     r"input dtype"),
    ("rnn-input-dtype-unbatched", "RNN", {}, lambda: (torch.randn(3, I, dtype=torch.float16),),
     ValueError, r"input dtype"),
    ("lstm-h0-dtype", "LSTM", {}, lambda: (torch.randn(3, 2, I), lstm_hx(1, 2, dtype=f64)),
     RuntimeError, r"hx\[0\]"),
    ("gru-h0-dtype", "GRU", {}, lambda: (torch.randn(3, 2, I), torch.zeros(1, 2, H, dtype=f64)),
     RuntimeError, r"hx"),
    ("rnn-h0-dtype", "RNN", {}, lambda: (torch.randn(3, 2, I), torch.zeros(1, 2, H, dtype=f64)),
     RuntimeError, r"hx"),
    ("lstm-T0", "LSTM", {}, lambda: (torch.randn(0, 2, I),), RuntimeError, r"sequence length"),
    ("gru-T0-bf", "GRU", {"batch_first": True}, lambda: (torch.randn(2, 0, I),), RuntimeError,
     r"sequence length"),
    ("rnn-T0-unbatched", "RNN", {}, lambda: (torch.randn(0, I),), RuntimeError, r"sequence length"),
    ("gru-unbatched-hx-3d", "GRU", {}, lambda: (torch.randn(3, I), torch.zeros(1, 1, H)),
     RuntimeError, r"hx"),
    ("lstm-batched-hx-2d", "LSTM", {}, lambda: (torch.randn(3, 2, I), (torch.zeros(2, H),) * 2),
     RuntimeError, r"hx"),
    # torch's LSTM: RuntimeError "lstm expects two hidden states"
    ("lstm-hx-three-states", "LSTM", {},
     lambda: (torch.randn(3, 2, I), (torch.zeros(1, 2, H),) * 3),
     RuntimeError, r"hx|hidden states"),
]

CELL_CASES = [
    ("rnncell-input-size", "RNNCell", lambda: (torch.randn(3, I + 1),), RuntimeError, "input_size"),
    ("grucell-input-size", "GRUCell", lambda: (torch.randn(I - 1),), RuntimeError, "input_size"),
    ("lstmcell-input-size", "LSTMCell", lambda: (torch.randn(3, I + 2),), RuntimeError,
     "input_size"),
    ("rnncell-hx-batch", "RNNCell", lambda: (torch.randn(3, I), torch.zeros(2, H)), RuntimeError,
     r"batch size"),
    ("grucell-hx-batch", "GRUCell", lambda: (torch.randn(3, I), torch.zeros(4, H)), RuntimeError,
     r"batch size"),
    ("lstmcell-hx-batch", "LSTMCell", lambda: (torch.randn(3, I), (torch.zeros(2, H),) * 2),
     RuntimeError, r"batch size"),
    ("rnncell-hx-hidden", "RNNCell", lambda: (torch.randn(3, I), torch.zeros(3, H + 1)),
     RuntimeError, r"hidden_size"),
    ("grucell-hx-hidden-unbatched", "GRUCell", lambda: (torch.randn(I), torch.zeros(H - 1)),
     RuntimeError, r"hidden_size"),
    ("lstmcell-hx-hidden", "LSTMCell", lambda: (torch.randn(3, I), (torch.zeros(3, H + 1),) * 2),
     RuntimeError, r"hidden_size"),
    ("rnncell-input-dtype", "RNNCell", lambda: (torch.randn(3, I, dtype=f64),), RuntimeError,
     r"dtype"),
    ("grucell-input-dtype", "GRUCell", lambda: (torch.randn(3, I, dtype=f64), torch.zeros(3, H)),
     RuntimeError, r"dtype"),
    ("lstmcell-input-dtype", "LSTMCell", lambda: (torch.randn(I, dtype=f64),), RuntimeError,
     r"dtype"),
    ("grucell-hx-dtype", "GRUCell", lambda: (torch.randn(3, I), torch.zeros(3, H, dtype=f64)),
     RuntimeError, r"hx"),
    ("rnncell-input-3d", "RNNCell", lambda: (torch.randn(1, 3, I),), ValueError,
     r"input.*1D or 2D"),
    ("lstmcell-input-3d", "LSTMCell", lambda: (torch.randn(1, 3, I),), ValueError,
     r"input.*1D or 2D"),
    # torch: RuntimeError "lstm_cell expects two hidden states"
    ("lstmcell-hx-one-state", "LSTMCell", lambda: (torch.randn(3, I), (torch.zeros(3, H),)),
     RuntimeError, r"hx|hidden states"),
    # torch: TypeError "lstm_cell(): argument 'hx' ... must be tuple of Tensors, not Tensor"
    ("lstmcell-hx-stacked-tensor", "LSTMCell", lambda: (torch.randn(3, I), torch.zeros(2, 3, H)),
     TypeError, r"hx"),
]


def assert_rejected(ref, rec, args, exc, match):
    before = dict(LAUNCH_COUNTS)
    with pytest.raises(exc, match=match):
        rec(*args)
    assert dict(LAUNCH_COUNTS) == before, "a kernel was launched before the input was rejected"
    # torch.nn raises the same exception type for the same input
    with pytest.raises(exc):
        ref(*args)


@pytest.mark.parametrize("cls,kw,build,exc,match",
                         [pytest.param(*c[1:], id=c[0]) for c in MODULE_CASES])
def test_module_rejects_like_torch(cls, kw, build, exc, match):
    torch.manual_seed(0)
    ref = getattr(nn, cls)(I, H, **kw)
    rec = getattr(recgen.nn, cls)(I, H, **kw)
    assert_rejected(ref, rec, build(), exc, match)


@pytest.mark.parametrize("cls,build,exc,match", [pytest.param(*c[1:], id=c[0]) for c in CELL_CASES])
def test_cell_rejects_like_torch(cls, build, exc, match):
    torch.manual_seed(0)
    ref = getattr(nn, cls)(I, H)
    rec = getattr(recgen.nn, cls)(I, H)
    assert_rejected(ref, rec, build(), exc, match)


# Inputs torch only rejects by accident (an AttributeError or IndexError from Python code that
# assumed a Tensor or a tuple): recgen raises torch's exception type with torch's words, then
# names the argument; a non-tensor's error is a TypeError as well (recgen.nn._checks.NotATensorError).
DIVERGENT_CASES = [
    ("gru-hx-list", "GRU", lambda: (torch.randn(3, 2, I), [[0.0] * H] * 2), r"hx must be a Tensor",
     AttributeError),
    ("lstm-c0-not-tensor", "LSTM", lambda: (torch.randn(3, 2, I), (torch.zeros(1, 2, H), 3)),
     r"hx\[1\] must be a Tensor", AttributeError),
    ("lstm-input-list", "LSTM", lambda: ([[0.0] * I] * 3,), r"input must be a Tensor",
     AttributeError),
    ("lstm-hx-tensor", "LSTM", lambda: (torch.randn(3, 2, I), torch.zeros(1, 2, H)),
     r"hx must be a tuple", IndexError),
    ("grucell-hx-list", "GRUCell", lambda: (torch.randn(2, I), [[0.0] * H] * 2),
     r"hx must be a Tensor", AttributeError),
]


@pytest.mark.parametrize("cls,build,match,torch_exc",
                         [pytest.param(*c[1:], id=c[0]) for c in DIVERGENT_CASES])
def test_non_tensor_and_non_tuple_state_raise_torchs_type(cls, build, match, torch_exc):
    torch.manual_seed(0)
    ref = getattr(nn, cls)(I, H)
    rec = getattr(recgen.nn, cls)(I, H)
    args = build()
    before = dict(LAUNCH_COUNTS)
    with pytest.raises(torch_exc, match=match) as raised:
        rec(*args)
    assert dict(LAUNCH_COUNTS) == before
    if torch_exc is AttributeError:  # a non-tensor: also the TypeError it is
        assert isinstance(raised.value, TypeError)
    with pytest.raises(torch_exc):
        ref(*args)


# --------------------------------------------------------------------------- valid, unusual input

def pair(cls, device, **kw):
    ref = getattr(nn, cls)(I, H, **kw).to(device)
    rec = getattr(recgen.nn, cls)(I, H, **kw).to(device)
    rec.load_state_dict(ref.state_dict())
    return ref, rec


def check_close(name, a, b):
    err = max_rel_error(a, b)
    assert err <= TOL, f"{name}: max relative error {err:.3g} > {TOL:g}"


def outputs_and_grads(module, make_args, leaves):
    """Run module on views built from fresh copies of `leaves`; return outputs and leaf grads."""
    fresh = [t.detach().clone().requires_grad_() for t in leaves]
    out = module(*make_args(*fresh))
    flat = []
    for o in out if isinstance(out, tuple) else (out,):
        flat += list(o) if isinstance(o, tuple) else [o]
    g = torch.Generator().manual_seed(11)
    grads = [torch.rand(o.shape, generator=g).to(o.device) * 2 - 1 for o in flat]
    torch.autograd.backward(flat, grads)
    return flat, [t.grad for t in fresh], {n: p.grad for n, p in module.named_parameters()}


VIEW_CASES = [
    # batch_first module fed x.transpose of a time-major tensor
    ("lstm-bf-transposed-input", "LSTM", {"batch_first": True},
     lambda d: [torch.randn(5, 3, I, device=d)], lambda x: (x.transpose(0, 1),)),
    # time-major module fed x.transpose of a batch-major tensor
    ("gru-transposed-input", "GRU", {"bidirectional": True},
     lambda d: [torch.randn(3, 5, I, device=d)], lambda x: (x.transpose(0, 1),)),
    # strided features and a transposed h0
    ("rnn-strided-features-h0", "RNN", {"num_layers": 2},
     lambda d: [torch.randn(4, 3, 2 * I, device=d), torch.randn(3, 2, H, device=d)],
     lambda x, h: (x[..., ::2], h.transpose(0, 1))),
    # expanded (stride-0) states
    ("lstm-expanded-states", "LSTM", {},
     lambda d: [torch.randn(4, 3, I, device=d), torch.randn(1, 1, H, device=d),
                torch.randn(1, 1, H, device=d)],
     lambda x, h, c: (x, (h.expand(1, 3, H), c.expand(1, 3, H)))),
    ("lstm-bf-time-slice", "LSTM", {"batch_first": True},
     lambda d: [torch.randn(3, 8, I, device=d)], lambda x: (x[:, 1:7:2],)),
    ("grucell-transposed-input", "GRUCell", {},
     lambda d: [torch.randn(I, 3, device=d), torch.randn(H, 3, device=d)],
     lambda x, h: (x.t(), h.t())),
    ("lstmcell-strided-input", "LSTMCell", {},
     lambda d: [torch.randn(3, 2 * I, device=d)], lambda x: (x[:, 1::2],)),
]


@pytest.mark.parametrize("cls,kw,make_leaves,make_args",
                         [pytest.param(*c[1:], id=c[0]) for c in VIEW_CASES])
def test_non_contiguous_views_match_torch(cls, kw, make_leaves, make_args, device):
    torch.manual_seed(1)
    ref, rec = pair(cls, device, **kw)
    leaves = make_leaves(device)
    views = [v for a in make_args(*leaves) for v in (a if isinstance(a, tuple) else (a,))]
    assert not all(v.is_contiguous() for v in views), "the case must pass a non-contiguous view"
    outs_r, grads_r, pgrads_r = outputs_and_grads(ref, make_args, leaves)
    before = dict(LAUNCH_COUNTS)
    outs, grads, pgrads = outputs_and_grads(rec, make_args, leaves)
    assert sum(LAUNCH_COUNTS.values()) > sum(before.values()), "the Triton path did not run"
    for k, (a, b) in enumerate(zip(outs, outs_r)):
        check_close(f"output {k}", a, b)
    for k, (a, b) in enumerate(zip(grads, grads_r)):
        check_close(f"leaf grad {k}", a, b)
    for name, g in pgrads_r.items():
        check_close(f"d{name}", pgrads[name], g)


@pytest.mark.parametrize("value", [pytest.param(float("nan"), id="nan"),
                                   pytest.param(float("inf"), id="inf"),
                                   pytest.param(float("-inf"), id="neg-inf")])
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_non_finite_input_propagates_like_torch(cls, value, device):
    torch.manual_seed(2)
    ref, rec = pair(cls, device, bidirectional=True)
    x = torch.randn(5, 3, I, device=device)
    x[2, 1, 0] = value
    x[4, 2, 3] = value
    outs_r, (dx_r,), pgrads_r = outputs_and_grads(ref, lambda t: (t,), [x])
    outs, (dx,), pgrads = outputs_and_grads(rec, lambda t: (t,), [x])
    pairs = list(zip(outs, outs_r)) + [(dx, dx_r)] + [(pgrads[n], g) for n, g in pgrads_r.items()]
    for k, (a, b) in enumerate(pairs):
        assert torch.equal(a.isnan(), b.isnan()), f"tensor {k}: NaN positions differ from torch"
        assert torch.equal(a.isinf(), b.isinf()), f"tensor {k}: Inf positions differ from torch"
        finite = torch.isfinite(b)
        inf = b.isinf()
        assert torch.equal(a[inf], b[inf]), f"tensor {k}: signs of the infinities differ"
        check_close(f"tensor {k} (finite part)", a[finite], b[finite])
    if value != value:  # NaN: it must actually reach the outputs of the rows it was put in
        assert outs_r[0][:, 1].isnan().any() and not outs_r[0][:, 0].isnan().any()
