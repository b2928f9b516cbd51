"""Drop-in torch.nn.RNNCell / GRUCell / LSTMCell: one fused recurrence launch per call (after
the input projection matmul). Subclasses of torch's cells: same parameters and state_dict.
Where the backend picks torch's own op (`auto` off the GPU, or `torch`), forward is torch's."""

from __future__ import annotations

import torch

from recgen import functional
from recgen.backend import implementation, record
from recgen.nn._checks import autocast_dtype, autocast_off, check_like, check_tensor, check_weights


class _CellForward:
    _states = 1  # 2 for LSTMCell: (h, c)

    def _torch_runs(self, input) -> bool:
        """True (and recorded) when torch's own cell forward is the implementation for `input`."""
        if isinstance(input, torch.Tensor) and implementation(input) == "torch":
            record("torch", self)
            return True
        return False

    def _ran(self, input) -> None:
        record(implementation(input), self)

    def _prepare(self, input, hx):
        """Validate and batch the inputs as torch's cells do; returns (input, states, params, batched)."""
        name = type(self).__name__
        check_tensor("input", input)
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(x.size(0), self.hidden_size, dtype=x.dtype, device=x.device)
            states = (zeros,) * self._states
        else:
            if self._states == 2 and not isinstance(hx, (tuple, list)):
                raise TypeError(f"lstm_cell(): argument 'hx' (position 2) must be tuple of Tensors, not "
                                f"{type(hx).__name__} ({name}: hx must be a tuple (h_0, c_0))")
            states = tuple(hx) if self._states == 2 else (hx,)
            if len(states) != self._states:
                raise RuntimeError(f"lstm_cell expects two hidden states ({name}: hx must hold (h_0, "
                                   f"c_0), got {len(states)})")
            for k, h in enumerate(states):
                label = f"hx[{k}]" if self._states == 2 else "hx"
                check_tensor(label, h)
                if h.dim() not in (1, 2):
                    raise ValueError(f"{name}: Expected {label} to be 1D or 2D, got {h.dim()}D instead")
            states = tuple(h if is_batched else h.unsqueeze(0) for h in states)
        if x.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.size(1)} expected "
                               f"{self.input_size} ({name})")
        for k, h in enumerate(states):
            label = f"hx[{k}]" if self._states == 2 else "hx"
            if h.dim() != 2 or h.size(0) != x.size(0):  # torch's words: "hidden0", "hidden1"
                raise RuntimeError(f"Input batch size {x.size(0)} doesn't match hidden{k} batch size "
                                   f"{h.size(0) if h.dim() == 2 else tuple(h.shape)} ({name}: {label})")
            if h.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden{k} has inconsistent hidden_size: got {h.size(1)}, expected "
                                   f"{self.hidden_size} ({name}: {label})")
            check_like(label, h, x, "input")
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else [])
        params = [getattr(self, n) for n in names]
        cast = autocast_dtype(x.device.type, self._get_name())
        if cast is not None:
            x, states = x.to(cast), tuple(h.to(cast) for h in states)
            params = [p.to(cast) for p in params]
        else:
            if x.dtype != params[0].dtype:
                raise RuntimeError(f"{name}: input dtype {x.dtype} does not match weight dtype "
                                   f"{params[0].dtype}")
            check_weights(name, zip(names, params), x)
        if not self.bias:
            params += [None, None]
        return x, states, params, is_batched


class RNNCell(_CellForward, torch.nn.RNNCell):
    """torch.nn.RNNCell with a fused step. >>> h = recgen.nn.RNNCell(10, 20)(torch.randn(3, 10))"""

    def forward(self, input, hx=None):
        if self._torch_runs(input):
            return super().forward(input, hx)
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        x, (h,), params, batched = self._prepare(input, hx)
        with autocast_off(x.device.type):
            out = functional.rnn_cell(x, h, *params, nonlinearity=self.nonlinearity)
        self._ran(x)
        return out if batched else out.squeeze(0)


class GRUCell(_CellForward, torch.nn.GRUCell):
    """torch.nn.GRUCell with a fused step. >>> h = recgen.nn.GRUCell(10, 20)(torch.randn(3, 10))"""

    def forward(self, input, hx=None):
        if self._torch_runs(input):
            return super().forward(input, hx)
        x, (h,), params, batched = self._prepare(input, hx)
        with autocast_off(x.device.type):
            out = functional.gru_cell(x, h, *params)
        self._ran(x)
        return out if batched else out.squeeze(0)


class LSTMCell(_CellForward, torch.nn.LSTMCell):
    """torch.nn.LSTMCell with a fused step. >>> h, c = recgen.nn.LSTMCell(10, 20)(torch.randn(3, 10))"""

    _states = 2

    def forward(self, input, hx=None):
        if self._torch_runs(input):
            return super().forward(input, hx)
        x, states, params, batched = self._prepare(input, hx)
        with autocast_off(x.device.type):
            h, c = functional.lstm_cell(x, states, *params)
        self._ran(x)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))
