"""Functional entry points, each running the implementation the backend picks for its data
(recgen.backend): the Triton path, torch's native op, or the pure-PyTorch reference; what ran is
recorded (recgen.backend.last_implementation).

- recurrences (recgen/functional/recurrent.py): lstm, gru, rnn (multi-layer, bidirectional,
  packed lengths) and the cells lstm_cell, gru_cell, rnn_cell;
- residual blocks (recgen/functional/residual.py): residual_block, and the fused convolution
  and elementwise pass it is made of, fused_conv2d and affine_act;
- dense layers (recgen/functional/dense.py): linear_act, act(x @ W^T + bias + residual).
"""

from recgen.functional.recurrent import (
    CELLS, check_lengths, gru, gru_cell, lstm, lstm_cell, recurrent_stack, rnn, rnn_cell, run_direction, run_layer,
    split_params,
)
from recgen.functional.dense import linear_act
from recgen.functional.residual import ConvParams, affine_act, fused_conv2d, residual_block

__all__ = ["CELLS", "ConvParams", "affine_act", "check_lengths", "fused_conv2d", "gru", "gru_cell", "linear_act",
           "lstm", "lstm_cell", "recurrent_stack", "residual_block", "rnn", "rnn_cell", "run_direction", "run_layer",
           "split_params"]
