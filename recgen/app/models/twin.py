"""torch_twin: the same model on torch.nn's layers, for comparing recgen against torch.

recgen's recurrent modules subclass torch's and add nothing to the instance, so their twin is
the same object with its class set back to the torch parent. The residual blocks have no
torch.nn class: their twin is TorchResidualBlock, which holds the same submodules and runs the
plain-torch reference (recgen.reference.residual.residual_block). A recgen.nn.Linear without an
activation becomes a torch.nn.Linear; with one, a TorchLinear: torch.nn.Linear followed by
torch's activation module (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid), in one module so that
the state_dict keys stay the layer's.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from recgen import nn as recgen_nn
from recgen.nn.residual import _FusedForward
from recgen.reference import residual as reference

TORCH_PARENTS = {
    recgen_nn.RNN: torch.nn.RNN, recgen_nn.GRU: torch.nn.GRU, recgen_nn.LSTM: torch.nn.LSTM,
    recgen_nn.RNNCell: torch.nn.RNNCell, recgen_nn.GRUCell: torch.nn.GRUCell, recgen_nn.LSTMCell: torch.nn.LSTMCell,
}


def _activation_module(layer: recgen_nn.Linear) -> nn.Module:
    if layer.activation == "relu":
        return nn.ReLU()
    if layer.activation == "leaky_relu":
        return nn.LeakyReLU(layer.negative_slope)
    if layer.activation == "tanh":
        return nn.Tanh()
    if layer.activation == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"TorchLinear: no torch module for activation {layer.activation!r}")


class TorchLinear(nn.Linear):
    """The twin of a recgen.nn.Linear with an activation: torch.nn.Linear's forward, then the
    activation as a torch module (`act`: nn.ReLU, nn.LeakyReLU(negative_slope), nn.Tanh or
    nn.Sigmoid). It holds the layer's own Parameters, so the state_dict keys are the layer's
    (weight, bias: the activation modules hold none).

    >>> twin = TorchLinear(recgen.nn.Linear(64, 32, activation="tanh"))   # Linear(64, 32) + Tanh()
    """

    def __init__(self, layer: recgen_nn.Linear):
        if not isinstance(layer, recgen_nn.Linear) or layer.activation is None:
            raise TypeError("TorchLinear: expected a recgen.nn.Linear with an activation, "
                            f"got {type(layer).__name__}" + ("" if not isinstance(layer, recgen_nn.Linear)
                                                             else " without one (its twin is torch.nn.Linear)"))
        # built on the meta device, then given the layer's Parameters: nothing is allocated twice
        super().__init__(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta",
                         dtype=layer.weight.dtype)
        self.weight = layer.weight
        if layer.bias is not None:
            self.bias = layer.bias
        self.act = _activation_module(layer)
        self.train(layer.training)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(input))


class TorchResidualBlock(nn.Module):
    """The twin of a recgen residual block (ResidualBlock, FusedBasicBlock, FusedResnetBlock):
    the block's own submodules, parameters and settings (so the same state_dict keys), with a
    forward of plain torch ops. The block class's _block_parts reads them off this module.

    >>> twin = TorchResidualBlock(recgen.nn.ResidualBlock(8, 16, stride=2))
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        if not isinstance(block, _FusedForward):
            raise TypeError("TorchResidualBlock: expected a recgen residual block, "
                            f"got {type(block).__name__}")
        self.source_class = type(block).__name__
        self._parts = type(block)._block_parts
        for name, child in block._modules.items():  # None entries too (e.g. norm=None)
            self.register_module(name, child)
        for name, param in block._parameters.items():
            self.register_parameter(name, param)
        for name, buf in block._buffers.items():
            self.register_buffer(name, buf, persistent=name not in block._non_persistent_buffers_set)
        for name, value in vars(block).items():
            if not name.startswith("_") and name != "training":
                setattr(self, name, value)
        self.train(block.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference.residual_block(x, training=self.training, **self._parts(self))

    def extra_repr(self) -> str:
        return f"twin of {self.source_class}"


def _twin_of(module: nn.Module) -> nn.Module:
    """The torch twin of one module (changed in place where a class swap suffices), or the
    module itself when it is not a recgen one."""
    cls = type(module)
    if cls is recgen_nn.Linear:
        if module.activation is not None:
            return TorchLinear(module)
        module.__class__ = torch.nn.Linear  # the same object, torch's class: nn.Linear exactly
        del module.activation, module.negative_slope
        return module
    if cls in TORCH_PARENTS:
        module.__class__ = TORCH_PARENTS[cls]
        if isinstance(module, nn.RNNBase):
            module.flatten_parameters()  # cuDNN's packed weights, as a freshly built torch module has
        return module
    if isinstance(module, _FusedForward):
        return TorchResidualBlock(module)
    if isinstance(module, (*TORCH_PARENTS, recgen_nn.Linear)):
        # A subclass of a recgen module may override forward: no faithful twin, so say so.
        raise TypeError(f"torch_twin: no torch twin for {cls.__module__}.{cls.__qualname__}, "
                        "a subclass of a recgen.nn module")
    return module


def _swap_children(module: nn.Module) -> None:
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        twin = _twin_of(child)
        if twin is not child:
            module._modules[name] = twin
        if not isinstance(twin, TorchResidualBlock):
            _swap_children(twin)


def torch_twin(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with every recgen.nn module replaced by its torch twin, holding
    equal (copied, not shared) parameters and buffers. The copy keeps the model's class, so a
    GenerativeModel's twin trains and samples through the same methods.

    >>> twin = torch_twin(model)    # same outputs, on torch.nn.LSTM and plain-torch blocks
    """
    twin = _twin_of(copy.deepcopy(model))
    if isinstance(twin, TorchResidualBlock):
        return twin
    _swap_children(twin)
    return twin
