"""Pure-PyTorch ground truth: step loops written from the cell equations (never torch._VF)."""

from recgen.reference.recurrent import (
    CELL_GATES,
    gru_cell,
    lstm_cell,
    recurrent_direction,
    rnn_cell,
)

__all__ = ["CELL_GATES", "gru_cell", "lstm_cell", "recurrent_direction", "rnn_cell"]
