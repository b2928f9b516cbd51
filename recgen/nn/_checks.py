"""Input checks shared by the modules: torch.nn's exception types, with messages that name the
argument and give the expected and received value. All run before any kernel launch."""

from __future__ import annotations

import torch


def check_tensor(name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(value).__name__}")


def check_like(name: str, tensor: torch.Tensor, like: torch.Tensor, like_name: str) -> None:
    """Same dtype and device as `like` (torch.nn raises RuntimeError for these)."""
    if tensor.dtype != like.dtype:
        raise RuntimeError(f"{name} must have the same dtype as {like_name}: expected {like.dtype}, "
                           f"got {tensor.dtype}")
    if tensor.device != like.device:
        raise RuntimeError(f"{name} must be on the same device as {like_name}: expected "
                           f"{like.device}, got {tensor.device}")


def check_weights(module_name: str, weights, input: torch.Tensor) -> None:
    """Every parameter on the input's device and in its dtype (autocast casts before this)."""
    for name, w in weights:
        if w.device != input.device:
            raise RuntimeError(f"{module_name}: parameter {name} is on {w.device} but the input is "
                               f"on {input.device}; move the module with .to({input.device})")
        if w.dtype != input.dtype:
            raise ValueError(f"{module_name}: parameter {name} has dtype {w.dtype} but the input has "
                             f"{input.dtype}; convert the input or the module")


def autocast_dtype(device_type: str, cells: bool = False):
    """The dtype torch.nn's recurrent ops run in under autocast, or None.

    torch's autocast lists the fused RNN ops for both CUDA and CPU; the cells only for CUDA.
    """
    if cells and device_type != "cuda":
        return None
    if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)
