"""Drop-in recurrent modules: subclasses of torch.nn's with fused Triton recurrences."""

from recgen.nn.cells import GRUCell, LSTMCell, RNNCell
from recgen.nn.rnn import GRU, LSTM, RNN

__all__ = ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell"]
