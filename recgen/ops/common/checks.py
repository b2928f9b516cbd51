"""Argument checks shared by the launchers of several families (run before any launch, and by the
ops' fake implementations, so torch.compile raises the same errors while tracing)."""

from __future__ import annotations

import torch


def check_residual(op: str, residual: torch.Tensor, shape: tuple, x: torch.Tensor, dtypes: tuple,
                   shape_name: str = "shape") -> None:
    """Raise a RuntimeError (torch's type for these) naming `op` and the residual unless it has
    `shape` (described as `shape_name`), x's device and one of `dtypes`."""
    if tuple(residual.shape) != tuple(shape):
        raise RuntimeError(f"{op}: residual must have {shape_name} {tuple(shape)}, got {tuple(residual.shape)}")
    if residual.device != x.device:
        raise RuntimeError(f"{op}: residual must be on {x.device} like x, got {residual.device}")
    if residual.dtype not in dtypes:
        raise RuntimeError(f"{op}: residual must be one of {dtypes}, got {residual.dtype}")
