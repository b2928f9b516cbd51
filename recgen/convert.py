"""recgen.convert: swap the recurrent modules and residual blocks of an existing model for
recgen's, in place, and fuse each nn.Linear followed by its activation inside an nn.Sequential
into one recgen.nn.Linear. Residual blocks are recognised by class name and structure, without
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


# The activation modules a preceding Linear absorbs: (recgen.nn.Linear's activation, its slope).
FUSED_ACTIVATIONS = {
    nn.ReLU: lambda m: ("relu", 0.01), nn.LeakyReLU: lambda m: ("leaky_relu", float(m.negative_slope)),
    nn.Tanh: lambda m: ("tanh", 0.01), nn.Sigmoid: lambda m: ("sigmoid", 0.01),
}


def _hooked(module) -> bool:
    """Whether a module has hooks that would see a fused pair differently (a forward hook on the
    Linear would see the activation's output; the activation's hooks would no longer run)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def _fusable_linear(module) -> bool:
    """An exact nn.Linear, or a recgen.nn.Linear without an activation, with no hooks."""
    plain = type(module) is nn.Linear or (type(module) is recgen_nn.Linear and module.activation is None)
    return plain and not _hooked(module)


def _linear_swapped(module: nn.Linear, activation, negative_slope=0.01) -> recgen_nn.Linear:
    """A recgen.nn.Linear sharing the module's whole state (Parameters, hooks, flags)."""
    new = recgen_nn.Linear.__new__(recgen_nn.Linear)
    new.__dict__.update(module.__dict__)
    new.activation, new.negative_slope = activation, float(negative_slope)
    return new


def _fuse_sequentials(model, report) -> None:
    """In every nn.Sequential of `model`: each fusable Linear followed by an exact nn.ReLU,
    LeakyReLU, Tanh or Sigmoid (no hooks) becomes a recgen.nn.Linear with that activation, and
    the activation an nn.Identity (so indices and state_dict keys stay)."""
    for parent_name, parent in list(model.named_modules()):
        if type(parent) is not nn.Sequential:
            continue
        names = list(parent._modules)
        for k, name in enumerate(names):
            child = parent._modules[name]
            after = parent._modules[names[k + 1]] if k + 1 < len(names) else None
            qualified = f"{parent_name}.{name}" if parent_name else name
            if child is None or not _fusable_linear(child):
                continue
            if type(after) in FUSED_ACTIVATIONS and not _hooked(after):
                activation, slope = FUSED_ACTIVATIONS[type(after)](after)
                setattr(parent, name, _linear_swapped(child, activation, slope))
                setattr(parent, names[k + 1], nn.Identity())
                act_name = f"{parent_name}.{names[k + 1]}" if parent_name else names[k + 1]
                _note_fused(report, qualified, child, act_name, after, activation)


def _target_class(module, linear: bool = False):
    """The recgen class to swap `module` for, or None."""
    if type(module) in SWAPS:
        return SWAPS[type(module)]
    if _is_basic_block(module):
        return recgen_nn.FusedBasicBlock
    if _is_resnet_block(module):
        return recgen_nn.FusedResnetBlock
    if linear and type(module) is nn.Linear:
        return recgen_nn.Linear
    return None


def _swapped(module: torch.nn.Module, linear: bool = False) -> torch.nn.Module:
    """A recgen instance that shares the module's whole state: the same Parameter and buffer
    objects (optimizers keep working), submodules, hooks and flags, so state_dict keys are unchanged."""
    cls = _target_class(module, linear)
    if cls is recgen_nn.Linear:
        return _linear_swapped(module, None)
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    if isinstance(new, torch.nn.RNNBase):
        allow_dynamo_rnn()
    return new


def convert(model: torch.nn.Module, report: list | None = None, linear: bool = False) -> torch.nn.Module:
    """Replace every torch.nn RNN/GRU/LSTM and cell, torchvision BasicBlock and CycleGAN
    ResnetBlock inside `model` with the recgen class, and fuse every nn.Linear followed by an
    nn.ReLU, LeakyReLU, Tanh or Sigmoid inside an nn.Sequential into a recgen.nn.Linear with that
    activation (the activation becomes an nn.Identity, so indices and state_dict keys stay).
    Other Linear layers are left alone unless `linear=True`, which swaps them for
    recgen.nn.Linear(activation=None).

    The replacement shares the original Parameter objects, so an optimizer built before the call
    still trains the model, and checkpoints load unchanged. Other modules are left alone. Each
    swap is logged on the 'recgen' logger and, if `report` is a list, appended to it as
    (qualified_name, torch_class_name) (a fused pair as two entries: the Linear and its
    activation). Returns the model (the new module if `model` itself was a torch recurrent
    module, or with linear=True a torch Linear).

    >>> model = recgen.convert(model)
    """
    if _target_class(model, linear) is not None:
        new = _swapped(model, linear)
        _note(report, "", model, linear)
        return new
    _fuse_sequentials(model, report)
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if _target_class(child, linear) is not None:
                qualified = f"{parent_name}.{child_name}" if parent_name else child_name
                setattr(parent, child_name, _swapped(child, linear))
                _note(report, qualified, child, linear)
    return model


def _note(report, name, module, linear=False):
    logger.info("recgen.convert: %s (%s) -> recgen.nn.%s", name or "<root>", type(module).__name__,
                _target_class(module, linear).__name__)
    if report is not None:
        report.append((name, type(module).__name__))


def _note_fused(report, name, linear, act_name, act, activation):
    logger.info("recgen.convert: %s (%s) + %s (%s) -> recgen.nn.Linear(activation=%r) + Identity", name,
                type(linear).__name__, act_name, type(act).__name__, activation)
    if report is not None:
        report += [(name, type(linear).__name__), (act_name, type(act).__name__)]
