"""Reference recurrences: one time step per Python iteration, differentiable by autograd.

Shapes: T steps, B batch, I input features, H hidden, P = proj_size or H (LSTM only projects).
Gate order follows torch.nn: LSTM (i, f, g, o), GRU (r, z, n). Works in any floating dtype,
float64 included, so tests can compare against it at high precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Number of gate blocks stacked in weight_ih / weight_hh for each cell.
CELL_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _input_projection(x, w_ih, b_ih):
    """x W_ih^T + b_ih; with w_ih None, x is that projection already (what the kernels take)."""
    return x if w_ih is None else F.linear(x, w_ih, b_ih)


def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh). x: (B, I), h: (B, H) -> (B, H)."""
    pre = _input_projection(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    if nonlinearity == "tanh":
        return torch.tanh(pre)
    if nonlinearity == "relu":
        return torch.relu(pre)
    raise ValueError(f"Unknown nonlinearity '{nonlinearity}'; expected 'tanh' or 'relu'")


def gru_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    """torch.nn.GRU's math: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); h' = (1 - z) n + z h."""
    gx_r, gx_z, gx_n = _input_projection(x, w_ih, b_ih).chunk(3, dim=-1)
    gh_r, gh_z, gh_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(gx_r + gh_r)
    z = torch.sigmoid(gx_z + gh_z)
    n = torch.tanh(gx_n + r * gh_n)
    return (1 - z) * n + z * h


def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None):
    """One LSTM step; with w_hr (P, H) the new hidden state is projected: h' = (o * tanh(c')) W_hr^T."""
    gates = _input_projection(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    if w_hr is not None:
        h_new = F.linear(h_new, w_hr)
    return h_new, c_new


def reverse_within_lengths(seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each batch column's first lengths[b] steps, leaving its padding in place.

    The index map is its own inverse, so the same call undoes it.
    """
    T, B = seq.shape[0], seq.shape[1]
    t = torch.arange(T, device=seq.device).unsqueeze(1)
    L = lengths.to(seq.device).unsqueeze(0)
    index = torch.where(t < L, L - 1 - t, t)
    index = index.view(T, B, *([1] * (seq.dim() - 2))).expand_as(seq)
    return seq.gather(0, index)


def recurrent_direction(cell, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None,
                        lengths=None, reverse=False):
    """Run one layer in one direction over a padded, time-major sequence.

    cell: 'lstm' | 'gru' | 'rnn_tanh' | 'rnn_relu'. x: (T, B, I), or with w_ih None the input
    projection x W_ih^T + b_ih (T, B, G*H); h0: (B, P); c0: (B, H) for LSTM else None; lengths: (B,) valid steps per batch column (None: all T). Padding steps
    leave the state unchanged and produce zero outputs, as torch's packed sequences do.
    Returns y (T, B, P), h_n (B, P), c_n (B, H) or None.

    >>> y, h, c = recurrent_direction('lstm', x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    """
    if cell not in CELL_GATES:
        raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(CELL_GATES)}")
    T = x.shape[0]
    full = lengths is None
    if full:
        lengths = torch.full((x.shape[1],), T, dtype=torch.long)
    lengths = lengths.to(x.device)
    if reverse:
        x = reverse_within_lengths(x, lengths)
    h, c, outputs = h0, c0, []
    for s in range(T):
        if cell == "lstm":
            h_new, c_new = lstm_cell(x[s], h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
        elif cell == "gru":
            h_new, c_new = gru_cell(x[s], h, w_ih, w_hh, b_ih, b_hh), None
        else:
            h_new, c_new = rnn_cell(x[s], h, w_ih, w_hh, b_ih, b_hh, cell[len("rnn_"):]), None
        if full:
            h, c = h_new, c_new
            outputs.append(h_new)
            continue
        valid = (s < lengths).unsqueeze(1)
        h = torch.where(valid, h_new, h)
        if c is not None:
            c = torch.where(valid, c_new, c)
        outputs.append(torch.where(valid, h_new, torch.zeros_like(h_new)))
    y = torch.stack(outputs) if outputs else x.new_zeros((0, x.shape[1], h0.shape[1]))
    if reverse:
        y = reverse_within_lengths(y, lengths)
    return y, h, c
