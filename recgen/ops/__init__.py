"""Launchers, torch.library ops and autograd Functions of the Triton kernels.

Importing this package registers the ops (torch.ops.recgen.*, see recgen/ops/library.py) when
triton is installed; the kernels themselves are compiled on first launch. Without triton the
ops are not registered and recgen runs its reference path.
"""

from recgen.backend import triton_available
from recgen.ops._launch import LAUNCH_COUNTS

__all__ = ["LAUNCH_COUNTS"]

if triton_available():
    from recgen.ops import affine, fused_conv, gru, lstm, rnn  # importing registers the ops
    __all__ += ["affine", "fused_conv", "gru", "lstm", "rnn"]
