"""Drop-in torch.nn.RNN / GRU / LSTM whose recurrence runs in recgen's kernels.

The classes subclass torch.nn's, so constructor, parameters, initialisation, state_dict,
flatten_parameters() and isinstance checks are torch's own; only forward changes. The forward
keeps torch's contract: batched or unbatched input, batch_first, PackedSequence (sorted or not;
per-sequence lengths are handled inside the kernels), optional h0 / (h0, c0). Where the backend
picks torch's own op (`auto` off the GPU, or `torch`), forward is torch.nn's, unchanged.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from recgen import functional
from recgen.backend import implementation, record
from recgen.nn._compile import allow_dynamo_rnn
from recgen.nn._checks import autocast_dtype, autocast_off, check_like, check_tensor, check_weights


class _RecurrentForward:
    """torch.nn.RNNBase.forward, with the fused op in place of torch._VF."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        allow_dynamo_rnn()

    def __setstate__(self, state):
        super().__setstate__(state)
        allow_dynamo_rnn()

    def _zero_state(self, batch, width, like):
        D = 2 if self.bidirectional else 1
        return torch.zeros(self.num_layers * D, batch, width, dtype=like.dtype, device=like.device)

    def _check_hx_dims(self, hx, is_batched):
        """torch.nn's words for a state of the wrong rank, recgen's module name after them."""
        states = hx if isinstance(hx, tuple) else (hx,)
        want = 3 if is_batched else 2
        if any(h.dim() != want for h in states):
            kind = "batched 3-D" if is_batched else "unbatched 2-D"
            if len(states) == 2:
                words = (f"For {kind} input, hx and cx should also be {want}-D but got "
                         f"({states[0].dim()}-D, {states[1].dim()}-D) tensors")
            else:
                words = f"For {kind} input, hx should also be {want}-D but got {states[0].dim()}-D tensor"
            raise RuntimeError(f"{words} ({type(self).__name__})")

    def forward(self, input, hx=None):
        data = input.data if isinstance(input, PackedSequence) else input
        impl = implementation(data) if isinstance(data, torch.Tensor) else None
        if impl == "torch":
            record(impl, self)
            return super().forward(input, hx)
        name = type(self).__name__
        is_lstm = self.mode == "LSTM"
        width = self.proj_size if self.proj_size > 0 else self.hidden_size
        packed = isinstance(input, PackedSequence)
        if packed and input.data.shape[0] == 0:
            # A hand-built PackedSequence of no rows (torch's packing functions refuse to build
            # one): torch's own forward, so the result is exactly torch's; nothing to launch.
            return super().forward(input, hx)
        if is_lstm and hx is not None:
            if isinstance(hx, torch.Tensor):
                # torch.nn indexes a bare tensor as (hx[0], hx[1]): its IndexError, or later its
                # rank error, is what a torch.nn user meets; recgen adds what was expected.
                try:
                    hx = (hx[0], hx[1])
                except IndexError as error:
                    raise IndexError(f"{error} ({name}: hx must be a tuple (h_0, c_0), got a Tensor "
                                     f"of shape {tuple(hx.shape)})") from None
            elif not isinstance(hx, (tuple, list)):
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
            if len(hx) != 2:
                raise RuntimeError(f"lstm expects two hidden states ({name}: hx must hold (h_0, c_0), "
                                   f"got {len(hx)})")
        if hx is not None:
            hx = tuple(hx) if is_lstm else hx
            for k, h in enumerate(hx if is_lstm else (hx,)):
                check_tensor(f"hx[{k}]" if is_lstm else "hx", h)

        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            checked, checked_sizes = data, batch_sizes
            self.check_input(data, batch_sizes)
            batch = int(batch_sizes[0])
            # Padded, in the packed (length-sorted) order; the lengths go to the kernels.
            x, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
            is_batched = True
            if hx is not None:
                # Checked in the caller's batch order, before reordering by length.
                self.check_forward_args(checked, hx, checked_sizes)
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            check_tensor("input", input)
            if input.dim() not in (2, 3):
                noun = " tensor" if self.mode.startswith("RNN_") else ""  # torch.nn.RNN's own wording
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D{noun} instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            checked = input if is_batched else input.unsqueeze(batch_dim)
            checked_sizes = lengths = sorted_indices = unsorted_indices = None
            if hx is not None:
                self._check_hx_dims(hx, is_batched)
                if not is_batched:
                    hx = tuple(h.unsqueeze(1) for h in hx) if is_lstm else hx.unsqueeze(1)
            self.check_input(checked, None)
            x = checked.transpose(0, 1) if self.batch_first else checked
            if x.shape[0] == 0:
                raise RuntimeError(f"Expected sequence length to be larger than 0 in RNN ({name}: got "
                                   f"input of shape {tuple(input.shape)})")
            batch = x.shape[1]

        if hx is None:
            hx = (self._zero_state(batch, width, x), self._zero_state(batch, self.hidden_size, x)) \
                if is_lstm else self._zero_state(batch, width, x)
        elif not packed:
            self.check_forward_args(checked, hx, checked_sizes)
        states = hx if is_lstm else (hx,)
        for k, h in enumerate(states):
            check_like(f"hx[{k}]" if is_lstm else "hx", h, x, "input")

        params = [getattr(self, n) for n in self._flat_weights_names]
        cast = autocast_dtype(x.device.type, self._get_name())
        if cast is not None:
            x = x.to(cast)
            states = tuple(h.to(cast) for h in states)
            params = [p.to(cast) for p in params]
        else:
            check_weights(name, zip(self._flat_weights_names, params), x)

        with autocast_off(x.device.type):
            options = dict(num_layers=self.num_layers, bidirectional=self.bidirectional, bias=self.bias,
                           dropout=float(self.dropout), training=self.training, lengths=lengths)
            if is_lstm:
                y, hidden = functional.lstm(x, (states[0], states[1]), params, proj_size=self.proj_size, **options)
            elif self.mode == "GRU":
                y, hidden = functional.gru(x, states[0], params, **options)
            else:
                y, hidden = functional.rnn(x, states[0], params, nonlinearity=self.nonlinearity, **options)
        record(impl, self)

        if packed:
            out = pack_padded_sequence(y, lengths)
            output = PackedSequence(out.data, batch_sizes, sorted_indices, unsorted_indices)
            return output, self.permute_hidden(hidden, unsorted_indices)
        if self.batch_first:
            y = y.transpose(0, 1)
        if not is_batched:
            y = y.squeeze(batch_dim)
            hidden = tuple(h.squeeze(1) for h in hidden) if is_lstm else hidden.squeeze(1)
        return y, hidden


class RNN(_RecurrentForward, torch.nn.RNN):
    """torch.nn.RNN (tanh or relu) with a fused Triton recurrence.

    >>> rnn = recgen.nn.RNN(10, 20, num_layers=2, nonlinearity='relu')
    >>> y, h_n = rnn(torch.randn(5, 3, 10))
    """


class GRU(_RecurrentForward, torch.nn.GRU):
    """torch.nn.GRU with a fused Triton recurrence (torch's gate math, b_hn inside r * (...)).

    >>> y, h_n = recgen.nn.GRU(10, 20, batch_first=True)(torch.randn(3, 5, 10))
    """


class LSTM(_RecurrentForward, torch.nn.LSTM):
    """torch.nn.LSTM (proj_size included) with a fused Triton recurrence.

    >>> y, (h_n, c_n) = recgen.nn.LSTM(10, 20, proj_size=8)(torch.randn(5, 3, 10))
    """
