"""recgen.convert: swap torch.nn recurrent modules of an existing model for recgen's, in place."""

from __future__ import annotations

import logging

import torch

from recgen import nn as rnn

logger = logging.getLogger("recgen")

# Exact torch classes only: a user's subclass may override forward, so it is left alone.
SWAPS = {
    torch.nn.RNN: rnn.RNN, torch.nn.GRU: rnn.GRU, torch.nn.LSTM: rnn.LSTM,
    torch.nn.RNNCell: rnn.RNNCell, torch.nn.GRUCell: rnn.GRUCell, torch.nn.LSTMCell: rnn.LSTMCell,
}


def _swapped(module: torch.nn.Module) -> torch.nn.Module:
    """A recgen instance that shares the module's whole state: the same Parameter and buffer
    objects (optimizers keep working), hooks and flags, so state_dict keys are unchanged."""
    new = SWAPS[type(module)].__new__(SWAPS[type(module)])
    new.__dict__.update(module.__dict__)
    return new


def convert(model: torch.nn.Module, report: list | None = None) -> torch.nn.Module:
    """Replace every torch.nn RNN/GRU/LSTM and cell inside `model` with the recgen class.

    The replacement shares the original Parameter objects, so an optimizer built before the call
    still trains the model, and checkpoints load unchanged. Other modules are left alone. Each
    swap is logged on the 'recgen' logger and, if `report` is a list, appended to it as
    (qualified_name, torch_class_name). Returns the model (the new module if `model` itself was
    a torch recurrent module).

    >>> model = recgen.convert(model)
    """
    if type(model) in SWAPS:
        new = _swapped(model)
        _note(report, "", model)
        return new
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) in SWAPS:
                qualified = f"{parent_name}.{child_name}" if parent_name else child_name
                setattr(parent, child_name, _swapped(child))
                _note(report, qualified, child)
    return model


def _note(report, name, module):
    logger.info("recgen.convert: %s (%s) -> recgen.nn.%s", name or "<root>", type(module).__name__,
                type(module).__name__)
    if report is not None:
        report.append((name, type(module).__name__))
