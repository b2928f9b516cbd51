"""The benchmark's FlashRNN provider (recgen.tools.benchmark._FlashRNNLayer) computes the same function
as the torch.nn module it stands in for: its weights mapped into FlashRNN's layout, checked with
FlashRNN's pure-PyTorch backend ("vanilla") on the CPU, outputs and final states, with and
without biases. (On a GPU the benchmark runs FlashRNN's CUDA backends with the same tensors.)"""

import pytest
import torch

from recgen.tools.benchmark import _FlashRNNLayer

flashrnn = pytest.importorskip("flashrnn.flashrnn").flashrnn

MODULES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN}


@pytest.mark.parametrize("op", sorted(MODULES))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_flashrnn_layer_matches_torch(op, bias):
    torch.manual_seed(4)
    module = MODULES[op](12, 12, bias=bias)
    if bias:  # torch initialises b_ih and b_hh alike; make every bias distinct
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name.startswith("bias"):
                    p.uniform_(-1, 1)
    layer = _FlashRNNLayer(flashrnn, op, module, backend="vanilla")
    x = torch.randn(5, 3, 12)
    y, state = layer(x)
    y_ref, state_ref = module(x)
    assert y.shape == y_ref.shape == (5, 3, 12)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    pairs = zip(state, state_ref) if op == "lstm" else [(state, state_ref)]
    for got, want in pairs:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_flashrnn_layer_backward_reaches_every_weight():
    """The timed fwdbwd pass differentiates through FlashRNN's tensors."""
    module = torch.nn.GRU(8, 8)
    layer = _FlashRNNLayer(flashrnn, "gru", module, backend="vanilla")
    x = torch.randn(4, 2, 8, requires_grad=True)
    layer(x)[0].float().sum().backward()
    for tensor in (x, layer.w_ih, layer.R, layer.b):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0

