"""Functional recurrences: multi-layer, bidirectional stacks (lstm, gru, rnn) and single cells.

Each call runs the implementation the backend picks for its data (recgen.backend): the Triton
path (per layer, the input projection of all directions as one matmul, then one kernel launch
running the whole time loop of every direction), torch's native op (recgen.torch_native) or the
pure-PyTorch reference; what ran is recorded (recgen.backend.last_implementation). Inputs are
validated by the modules (recgen.nn) before any launch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recgen import torch_native
from recgen.backend import check_kernel_dtype, implementation, record, use_triton
from recgen.reference import recurrent_direction

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def run_direction(cell, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, lengths=None,
                  reverse=False):
    """One layer in one direction: x (T, B, I) -> y (T, B, P), h_n (B, P), c_n (B, H) or None."""
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; expected one of {CELLS}")
    impl = record(implementation(x))
    if impl == "torch":
        return torch_native.direction(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
    if impl == "reference":
        return recurrent_direction(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
    check_kernel_dtype(x, cell)
    if cell == "lstm":
        from recgen.ops.recurrent.lstm import lstm_direction
        return lstm_direction(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
    if cell == "gru":
        from recgen.ops.recurrent.gru import gru_direction
        y, h_n = gru_direction(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
        return y, h_n, None
    from recgen.ops.recurrent.rnn import rnn_direction
    y, h_n = rnn_direction(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, cell[len("rnn_"):])
    return y, h_n, None


def check_lengths(lengths, steps: int, batch: int) -> None:
    """Lengths index time inside the kernels, so they are checked before any launch. They live
    on the CPU (as pack_padded_sequence requires), so the check costs no device sync."""
    if not isinstance(lengths, torch.Tensor) or lengths.device.type != "cpu" or lengths.dim() != 1 \
            or lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"lengths must be a 1-D int64 or int32 CPU tensor, got "
                         f"{getattr(lengths, 'shape', type(lengths).__name__)}")
    if lengths.numel() != batch:
        raise RuntimeError(f"lengths must have one entry per batch row: expected {batch}, got "
                           f"{lengths.numel()}")
    if batch and (int(lengths.min()) < 1 or int(lengths.max()) > steps):
        raise ValueError(f"lengths must lie in [1, {steps}] (the padded sequence length), got "
                         f"values in [{int(lengths.min())}, {int(lengths.max())}]")


def split_params(params, num_layers: int, num_directions: int, has_bias: bool, has_proj: bool):
    """Group torch's flat weight list (the order of nn.LSTM._flat_weights) per layer and
    direction into (w_ih, w_hh, b_ih, b_hh, w_hr) tuples, missing entries as None."""
    per = 2 + 2 * has_bias + has_proj
    if len(params) != num_layers * num_directions * per:
        raise ValueError(f"params: expected {num_layers * num_directions * per} tensors for "
                         f"{num_layers} layer(s) x {num_directions} direction(s), got {len(params)}")
    groups = []
    for k in range(num_layers * num_directions):
        chunk = list(params[k * per:(k + 1) * per])
        w_ih, w_hh = chunk[0], chunk[1]
        b_ih, b_hh = (chunk[2], chunk[3]) if has_bias else (None, None)
        w_hr = chunk[-1] if has_proj else None
        groups.append((w_ih, w_hh, b_ih, b_hh, w_hr))
    return groups


def run_layer(cell, x, h0, c0, groups, lengths=None):
    """One layer with all its D directions (D = len(groups); direction 1 runs reversed).

    x: (T, B, I); h0: (D, B, P); c0: (D, B, H) or None; groups: D tuples (w_ih, w_hh, b_ih,
    b_hh, w_hr). On the Triton path the D directions share one launch each way; otherwise the
    reference runs each direction. Returns y (T, B, D*P), h_n (D, B, P), c_n (D, B, H) or None.
    """
    if not use_triton(x):
        outs = [recurrent_direction(cell, x, h0[d], None if c0 is None else c0[d], *g, lengths, d == 1)
                for d, g in enumerate(groups)]
        y = outs[0][0] if len(outs) == 1 else torch.cat([o[0] for o in outs], dim=-1)
        c_n = None if c0 is None else torch.stack([o[2] for o in outs])
        return y, torch.stack([o[1] for o in outs]), c_n
    w_ih, w_hh, b_ih, b_hh, w_hr = (list(column) for column in zip(*groups))
    if cell == "lstm":
        from recgen.ops.recurrent.lstm import lstm_layer
        return lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths)
    if cell == "gru":
        from recgen.ops.recurrent.gru import gru_layer
        return (*gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths), None)
    from recgen.ops.recurrent.rnn import rnn_layer
    return (*rnn_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity=cell[len("rnn_"):]), None)


def recurrent_stack(cell, x, h0, c0, params, *, num_layers=1, bidirectional=False, bias=True,
                    proj_size=0, dropout=0.0, training=False, lengths=None):
    """Run a stack of recurrent layers over a padded time-major sequence.

    x: (T, B, I); h0: (L*D, B, P); c0: (L*D, B, H) for LSTM else None; params: flat list in
    torch's order; lengths: (B,) valid steps (None: all T). Returns y (T, B, D*P), h_n, c_n.
    """
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; expected one of {CELLS}")
    D = 2 if bidirectional else 1
    if lengths is not None:
        check_lengths(lengths, x.shape[0], x.shape[1])
    impl = record(implementation(x))
    if impl == "torch":
        return torch_native.stack(cell, x, h0, c0, params, num_layers=num_layers,
                                  bidirectional=bidirectional, bias=bias, dropout=dropout,
                                  training=training, lengths=lengths)
    if impl != "reference":
        check_kernel_dtype(x, cell)
    groups = split_params(params, num_layers, D, bias, proj_size > 0)
    h_out, c_out = [], []
    layer_in = x
    for layer in range(num_layers):
        k = layer * D
        layer_in, h_n, c_n = run_layer(cell, layer_in, h0[k:k + D], None if c0 is None else c0[k:k + D],
                                       groups[k:k + D], lengths)
        h_out.append(h_n)
        c_out.append(c_n)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_in = F.dropout(layer_in, p=dropout, training=True)
    c_final = torch.cat(c_out) if c0 is not None else None
    return layer_in, torch.cat(h_out), c_final


def _swap_batch_first(x, batch_first):
    return x.transpose(0, 1) if batch_first else x


def lstm(input, hx, params, *, num_layers=1, bidirectional=False, bias=True, proj_size=0,
         dropout=0.0, training=False, batch_first=False, lengths=None):
    """Multi-layer LSTM. input: (T, B, I) ((B, T, I) with batch_first); hx = (h0, c0).

    >>> y, (h, c) = recgen.functional.lstm(x, (h0, c0), list(module._flat_weights))
    """
    y, h, c = recurrent_stack("lstm", _swap_batch_first(input, batch_first), hx[0], hx[1], params,
                              num_layers=num_layers, bidirectional=bidirectional, bias=bias,
                              proj_size=proj_size, dropout=dropout, training=training,
                              lengths=lengths)
    return _swap_batch_first(y, batch_first), (h, c)


def gru(input, hx, params, *, num_layers=1, bidirectional=False, bias=True, dropout=0.0,
        training=False, batch_first=False, lengths=None):
    """Multi-layer GRU. input: (T, B, I) ((B, T, I) with batch_first); hx: (L*D, B, H)."""
    y, h, _ = recurrent_stack("gru", _swap_batch_first(input, batch_first), hx, None, params,
                              num_layers=num_layers, bidirectional=bidirectional, bias=bias,
                              dropout=dropout, training=training, lengths=lengths)
    return _swap_batch_first(y, batch_first), h


def rnn(input, hx, params, *, nonlinearity="tanh", num_layers=1, bidirectional=False, bias=True,
        dropout=0.0, training=False, batch_first=False, lengths=None):
    """Multi-layer Elman RNN with tanh or relu. input: (T, B, I); hx: (L*D, B, H)."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    y, h, _ = recurrent_stack(f"rnn_{nonlinearity}", _swap_batch_first(input, batch_first), hx, None,
                              params, num_layers=num_layers, bidirectional=bidirectional,
                              bias=bias, dropout=dropout, training=training, lengths=lengths)
    return _swap_batch_first(y, batch_first), h


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step: input (B, I), hx = (h, c) each (B, H) -> (h', c'). One recurrence launch."""
    if record(implementation(input)) == "torch":
        return torch_native.cell_step("lstm", input, hx, w_ih, w_hh, b_ih, b_hh)
    y, h, c = run_direction("lstm", input.unsqueeze(0), hx[0], hx[1], w_ih, w_hh, b_ih, b_hh)
    return h, c


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One GRU step: input (B, I), hx (B, H) -> h'."""
    if record(implementation(input)) == "torch":
        return torch_native.cell_step("gru", input, (hx,), w_ih, w_hh, b_ih, b_hh)
    return run_direction("gru", input.unsqueeze(0), hx, None, w_ih, w_hh, b_ih, b_hh)[1]


def rnn_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """One Elman RNN step: input (B, I), hx (B, H) -> h'."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    if record(implementation(input)) == "torch":
        return torch_native.cell_step(f"rnn_{nonlinearity}", input, (hx,), w_ih, w_hh, b_ih, b_hh)
    return run_direction(f"rnn_{nonlinearity}", input.unsqueeze(0), hx, None, w_ih, w_hh,
                         b_ih, b_hh)[1]
