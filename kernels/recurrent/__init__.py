"""Recurrence kernels, installed as `recgen.kernels.recurrent`: one module per cell (LSTM, GRU, Elman
RNN) in the single-program mode (lstm.py, gru.py, rnn.py) and the persistent multi-program mode
(*_persistent.py), on the step helpers of steps.py. Launchers are in recgen/ops."""
