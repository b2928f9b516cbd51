"""Drop-in recurrent modules (subclasses of torch.nn's) and residual conv blocks, on fused Triton kernels."""

from recgen.nn.cells import GRUCell, LSTMCell, RNNCell
from recgen.nn.residual import FusedBasicBlock, FusedResnetBlock, ResidualBlock
from recgen.nn.rnn import GRU, LSTM, RNN

__all__ = ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell", "ResidualBlock", "FusedBasicBlock",
           "FusedResnetBlock"]
