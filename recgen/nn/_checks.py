"""Input checks shared by the modules: torch.nn's exception types, with messages that name the
argument and give the expected and received value. All run before any kernel launch."""

from __future__ import annotations

import torch


class NotATensorError(TypeError, AttributeError):
    """A non-tensor where a tensor belongs. torch.nn's recurrent modules fail on it with an
    AttributeError (they call `.dim()` on it); a TypeError is what it is. Both `except` clauses
    catch this one."""


def check_tensor(name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise NotATensorError(f"'{type(value).__name__}' object has no attribute 'dim' ({name} must be "
                              f"a Tensor, got {type(value).__name__})")


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


# Which torch.nn recurrent modules autocast runs in lower precision, per device type, as
# measured on torch 2.13: on CUDA all of them (cuDNN RNNs and the fused cells); on the CPU the
# oneDNN LSTM and RNN, and RNNCell (it decomposes into linear ops), but not GRU or the other cells.
AUTOCAST_LOWERED = {
    "cuda": {"RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell"},
    "cpu": {"RNN", "LSTM", "RNNCell"},
}


def autocast_dtype(device_type: str, module_name: str):
    """The dtype torch.nn's `module_name` runs in under the active autocast, or None."""
    if device_type not in AUTOCAST_LOWERED or not torch.is_autocast_enabled(device_type):
        return None
    if module_name not in AUTOCAST_LOWERED[device_type]:
        return None
    return torch.get_autocast_dtype(device_type)


def autocast_off(device_type: str):
    """recgen casts explicitly (autocast_dtype), so its internal matmuls must not be re-cast."""
    return torch.autocast(device_type=device_type, enabled=False)


# The dtypes autocast casts (to its lower-precision dtype) when an op on its list takes them.
AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def input_autocast_dtype(x: torch.Tensor):
    """The dtype torch's conv2d or linear runs in for input `x` under the active autocast, or
    None: both are on autocast's lower-precision list on every device type recgen runs on (CPU
    and CUDA), and autocast casts only the eligible dtypes (not float64)."""
    device_type = x.device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    if x.dtype not in AUTOCAST_ELIGIBLE:
        return None
    return torch.get_autocast_dtype(device_type)
