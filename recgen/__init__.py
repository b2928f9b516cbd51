"""recgen: drop-in torch.nn recurrent layers whose time loop runs in fused Triton kernels.

    import recgen
    model = recgen.convert(model)            # swap every nn.RNN/GRU/LSTM(/Cell) in place
    lstm = recgen.nn.LSTM(64, 128, num_layers=2, batch_first=True)

Triton is imported when a recgen op is first used; its torch.library ops (torch.ops.recgen.*)
register then (`recgen.ops.register_all()` does it up front). Without Triton the package and
its reference path still work.
"""

__version__ = "0.1.0"

from recgen.backend import get_backend, set_backend  # noqa: E402
from recgen.convert import convert  # noqa: E402
from recgen import nn, functional, ops, reference  # noqa: E402
from recgen.nn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell  # noqa: E402

__all__ = [
    "__version__", "convert", "get_backend", "set_backend", "nn", "functional", "ops", "reference",
    "RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell",
]
