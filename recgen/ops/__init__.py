"""Launchers, torch.library ops and autograd Functions of the Triton kernels.

The op modules (lstm, gru, rnn, fused_conv, affine, dense linear) register torch.ops.recgen.*
when they are first imported, which recgen's functions do on first use (and torch.compile while
tracing).
They are not imported with the package: importing them imports Triton, and `recgen check`
must be able to turn Triton's interpreter on after `import recgen` on a machine without CUDA.
`import recgen.ops.recurrent.lstm` (etc.) registers an op explicitly; `register_all()` registers every one.
"""

from recgen.ops.common.launch import LAUNCH_COUNTS

__all__ = ["LAUNCH_COUNTS", "register_all"]


OP_MODULES = ("recurrent.lstm", "recurrent.gru", "recurrent.rnn", "conv.conv2d", "conv.conv2d_bwd", "conv.affine",
              "dense.linear")


def register_all() -> None:
    """Import every op module, registering torch.ops.recgen.* (needs Triton)."""
    import importlib

    for name in OP_MODULES:
        importlib.import_module(f"recgen.ops.{name}")
