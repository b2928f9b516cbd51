"""recgen.convert: swap the recurrent modules and residual blocks of an existing model for
recgen's, in place. Residual blocks are recognised by class name and structure, without
importing their libraries; anything that does not match exactly is left alone."""

from __future__ import annotations

import logging

import torch
from torch import nn

from recgen import nn as recgen_nn
from recgen.nn._compile import allow_dynamo_rnn

logger = logging.getLogger("recgen")

# Exact torch classes only: a user's subclass may override forward, so it is left alone.
SWAPS = {
    torch.nn.RNN: recgen_nn.RNN, torch.nn.GRU: recgen_nn.GRU, torch.nn.LSTM: recgen_nn.LSTM,
    torch.nn.RNNCell: recgen_nn.RNNCell, torch.nn.GRUCell: recgen_nn.GRUCell, torch.nn.LSTMCell: recgen_nn.LSTMCell,
}


def _plain_conv(m, kernel, stride=(1,), padding=None) -> bool:
    """A Conv2d recgen's fused conv runs: square odd kernel, "same" (or given) padding, no groups."""
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (kernel, kernel) and m.groups == 1
            and m.dilation == (1, 1) and m.stride[0] == m.stride[1] and m.stride[0] in stride
            and m.padding == ((kernel // 2,) * 2 if padding is None else (padding, padding))
            and m.padding_mode == "zeros")


def _is_basic_block(m) -> bool:
    """torchvision's BasicBlock: conv1, bn1, relu, conv2, bn2 and downsample (None or 1x1 conv + BN)."""
    if type(m).__name__ != "BasicBlock":
        return False
    kids = dict(m.named_children())
    down = getattr(m, "downsample", "missing")
    if set(kids) - {"downsample"} != {"conv1", "bn1", "relu", "conv2", "bn2"} or down == "missing":
        return False
    ok = (_plain_conv(m.conv1, 3, (1, 2)) and _plain_conv(m.conv2, 3) and isinstance(m.relu, nn.ReLU)
          and isinstance(m.bn1, nn.BatchNorm2d) and isinstance(m.bn2, nn.BatchNorm2d))
    if down is not None:
        ok = ok and (isinstance(down, nn.Sequential) and len(down) == 2
                     and _plain_conv(down[0], 1, (m.conv1.stride[0],)) and isinstance(down[1], nn.BatchNorm2d))
    return ok


def _is_resnet_block(m) -> bool:
    """The CycleGAN/pix2pix ResnetBlock: x + conv_block(x), conv_block = [ReflectionPad2d(1)],
    Conv2d 3x3, norm, ReLU, [Dropout], [ReflectionPad2d(1)], Conv2d 3x3, norm."""
    if type(m).__name__ != "ResnetBlock" or set(dict(m.named_children())) != {"conv_block"}:
        return False
    layers = [layer for layer in m.conv_block if not isinstance(layer, nn.Dropout)]
    pads = [isinstance(layer, nn.ReflectionPad2d) and layer.padding == (1, 1, 1, 1) for layer in layers]
    if any(pads):
        if len(layers) != 7 or pads != [True, False, False, False, True, False, False]:
            return False
        convs, norms, relu = [layers[1], layers[5]], [layers[2], layers[6]], layers[3]
        padding = 0
    else:
        if len(layers) != 5:
            return False
        convs, norms, relu, padding = [layers[0], layers[3]], [layers[1], layers[4]], layers[2], None
    norm_ok = all(isinstance(n, nn.BatchNorm2d) or (isinstance(n, nn.InstanceNorm2d) and not n.track_running_stats)
                  for n in norms)
    return (all(_plain_conv(c, 3, padding=padding) for c in convs) and norm_ok and isinstance(relu, nn.ReLU)
            and len(m.conv_block) - len(layers) <= 1)


def _target_class(module):
    """The recgen class to swap `module` for, or None."""
    if type(module) in SWAPS:
        return SWAPS[type(module)]
    if _is_basic_block(module):
        return recgen_nn.FusedBasicBlock
    if _is_resnet_block(module):
        return recgen_nn.FusedResnetBlock
    return None


def _swapped(module: torch.nn.Module) -> torch.nn.Module:
    """A recgen instance that shares the module's whole state: the same Parameter and buffer
    objects (optimizers keep working), submodules, hooks and flags, so state_dict keys are unchanged."""
    cls = _target_class(module)
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    if isinstance(new, torch.nn.RNNBase):
        allow_dynamo_rnn()
    return new


def convert(model: torch.nn.Module, report: list | None = None) -> torch.nn.Module:
    """Replace every torch.nn RNN/GRU/LSTM and cell, torchvision BasicBlock and CycleGAN
    ResnetBlock inside `model` with the recgen class.

    The replacement shares the original Parameter objects, so an optimizer built before the call
    still trains the model, and checkpoints load unchanged. Other modules are left alone. Each
    swap is logged on the 'recgen' logger and, if `report` is a list, appended to it as
    (qualified_name, torch_class_name). Returns the model (the new module if `model` itself was
    a torch recurrent module).

    >>> model = recgen.convert(model)
    """
    if _target_class(model) is not None:
        new = _swapped(model)
        _note(report, "", model)
        return new
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if _target_class(child) is not None:
                qualified = f"{parent_name}.{child_name}" if parent_name else child_name
                setattr(parent, child_name, _swapped(child))
                _note(report, qualified, child)
    return model


def _note(report, name, module):
    logger.info("recgen.convert: %s (%s) -> recgen.nn.%s", name or "<root>", type(module).__name__,
                _target_class(module).__name__)
    if report is not None:
        report.append((name, type(module).__name__))
