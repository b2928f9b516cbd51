"""torch's own recurrent ops behind recgen's functional API: the `torch` backend (what `auto` runs
where the kernels do not, e.g. on the CPU).

The modules (recgen.nn) reach torch's op through their parent class's forward; these helpers
serve the functional entry points (recgen.functional), with the same arguments as the kernels'
and the reference's: torch._VF's fused stack (torch.nn.LSTM.forward's own call) and
torch.lstm_cell & co. Padded, time-major sequences with optional lengths (packed internally, as
torch.nn does for a PackedSequence: padding steps give zero outputs and leave the state alone).
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from recgen.reference.recurrent import reverse_within_lengths

_STACK = {"lstm": torch._VF.lstm, "gru": torch._VF.gru, "rnn_tanh": torch._VF.rnn_tanh,
          "rnn_relu": torch._VF.rnn_relu}
_CELL = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn_tanh": torch.rnn_tanh_cell,
         "rnn_relu": torch.rnn_relu_cell}


def stack(cell, x, h0, c0, params, *, num_layers, bidirectional, bias, dropout, training, lengths):
    """x (T, B, I), h0 (L*D, B, P), c0 (L*D, B, H) or None, params in torch's flat order ->
    y (T, B, D*P), h_n, c_n (None unless LSTM). One torch._VF call for the whole stack."""
    hx = [h0, c0] if cell == "lstm" else h0
    flags = (bias, num_layers, float(dropout), training, bidirectional)
    if lengths is None:
        out = _STACK[cell](x, hx, list(params), *flags, False)
    else:
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        order = packed.sorted_indices
        hx = [h.index_select(1, order) for h in hx] if cell == "lstm" else hx.index_select(1, order)
        out = _STACK[cell](packed.data, packed.batch_sizes, hx, list(params), *flags)
        y, _ = pad_packed_sequence(packed._replace(data=out[0]), total_length=x.shape[0])
        states = [s.index_select(1, packed.unsorted_indices) for s in out[1:]]
        out = (y, *states)
    return out[0], out[1], out[2] if cell == "lstm" else None


def direction(cell, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, lengths=None,
              reverse=False):
    """One layer, one direction (reversed within each sequence's length when `reverse`), with the
    arguments of recgen.reference.recurrent_direction; returns y (T, B, P), h_n (B, P), c_n."""
    has_bias = b_ih is not None
    params = [w_ih, w_hh] + ([b_ih, b_hh] if has_bias else []) + ([w_hr] if w_hr is not None else [])
    if reverse:
        steps = lengths if lengths is not None else torch.full((x.shape[1],), x.shape[0], dtype=torch.long)
        x = reverse_within_lengths(x, steps)
    y, h_n, c_n = stack(cell, x, h0.unsqueeze(0), None if c0 is None else c0.unsqueeze(0), params,
                        num_layers=1, bidirectional=False, bias=has_bias, dropout=0.0,
                        training=False, lengths=lengths)
    if reverse:
        y = reverse_within_lengths(y, steps)
    return y, h_n[0], None if c_n is None else c_n[0]


def cell_step(cell, x, states, w_ih, w_hh, b_ih=None, b_hh=None):
    """One step of torch's fused cell: x (B, I), states (h,) or (h, c) -> h' or (h', c')."""
    if cell == "lstm":
        return _CELL[cell](x, tuple(states), w_ih, w_hh, b_ih, b_hh)
    return _CELL[cell](x, states[0], w_ih, w_hh, b_ih, b_hh)
