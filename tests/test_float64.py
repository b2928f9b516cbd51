"""float64 is computed in float64: `auto` hands it to torch's own op (the kernels compute in
float32), so gradcheck and gradgradcheck pass through recgen's modules as through torch.nn's;
the kernels refuse it rather than computing it at float32 precision."""

import pytest
import torch
from functools import partial

from torch.autograd import gradcheck as _gradcheck, gradgradcheck as _gradgradcheck
from torch.nn.utils.rnn import pack_padded_sequence

import recgen
from recgen.backend import implementation_of

f64 = torch.float64
# fast_mode checks the Jacobian along random directions (torch's documented option): the same
# failures are caught (a float32 computation fails it, as the issue measured) in a fraction of the time.
gradcheck, gradgradcheck = partial(_gradcheck, fast_mode=True), partial(_gradgradcheck, fast_mode=True)


def _outputs(out):
    """Every tensor of a module's output (PackedSequence data, states), flattened."""
    flat = []
    for o in out if isinstance(out, tuple) else (out,):
        if isinstance(o, torch.nn.utils.rnn.PackedSequence):
            flat.append(o.data)
        elif isinstance(o, tuple):
            flat += list(o)
        else:
            flat.append(o)
    return tuple(flat)


RECURRENT = [
    ("lstm-proj-bidir-2layers", lambda: recgen.nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)),
    ("gru-bidir-2layers", lambda: recgen.nn.GRU(3, 4, num_layers=2, bidirectional=True)),
    ("rnn-tanh", lambda: recgen.nn.RNN(3, 4, num_layers=2)),
    ("rnn-relu", lambda: recgen.nn.RNN(3, 4, nonlinearity="relu", bidirectional=True)),
]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("build", [b for _, b in RECURRENT], ids=[n for n, _ in RECURRENT])
def test_recurrent_gradcheck_and_gradgradcheck(build, packed):
    torch.manual_seed(0)
    module = build().to(f64)
    x = torch.randn(4, 3, 3, dtype=f64, requires_grad=True)
    lengths = torch.tensor([4, 2, 3])

    def run(x, *params):
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        return _outputs(module(inp))

    inputs = (x, *module.parameters())
    assert gradcheck(run, inputs) and gradgradcheck(run, inputs)
    assert implementation_of(module) == "torch"


CELLS = [("lstm-cell", lambda: recgen.nn.LSTMCell(3, 4)), ("gru-cell", lambda: recgen.nn.GRUCell(3, 4)),
         ("rnn-cell", lambda: recgen.nn.RNNCell(3, 4))]


@pytest.mark.parametrize("build", [b for _, b in CELLS], ids=[n for n, _ in CELLS])
def test_cell_gradcheck_and_gradgradcheck(build):
    torch.manual_seed(0)
    module = build().to(f64)
    x = torch.randn(2, 3, dtype=f64, requires_grad=True)
    inputs = (x, *module.parameters())
    assert gradcheck(lambda x, *p: _outputs(module(x)), inputs)
    assert gradgradcheck(lambda x, *p: _outputs(module(x)), inputs)
    assert implementation_of(module) == "torch"


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_residual_block_gradcheck_and_gradgradcheck(norm, train):
    torch.manual_seed(0)
    block = recgen.nn.ResidualBlock(2, 3, norm=norm, activation="leaky_relu").to(f64).train(train)
    x = torch.randn(2, 2, 3, 4, dtype=f64, requires_grad=True)
    inputs = (x, *block.parameters())
    assert gradcheck(lambda x, *p: block(x), inputs)
    assert gradgradcheck(lambda x, *p: block(x), inputs)
    assert implementation_of(block) == "torch"


def test_float64_matches_torch_nn_exactly():
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(4, 4).double()
    ours = recgen.convert(torch.nn.LSTM(4, 4).double())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 2, 4, dtype=f64)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=0, atol=0)


def test_kernels_refuse_float64():
    recgen.set_backend("triton")
    with pytest.raises(RuntimeError, match="kernels take float32, float16 or bfloat16, got torch.float64"):
        recgen.nn.GRU(3, 4).double()(torch.randn(2, 1, 3, dtype=f64))
