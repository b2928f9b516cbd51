"""Drop-in recurrent modules and a dense layer (subclasses of torch.nn's) and residual conv blocks, on fused
Triton kernels."""

from recgen.nn.cells import GRUCell, LSTMCell, RNNCell
from recgen.nn.linear import Linear
from recgen.nn.residual import FusedBasicBlock, FusedResnetBlock, ResidualBlock
from recgen.nn.rnn import GRU, LSTM, RNN

__all__ = ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell", "Linear", "ResidualBlock", "FusedBasicBlock",
           "FusedResnetBlock"]
