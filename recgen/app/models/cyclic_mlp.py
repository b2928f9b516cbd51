"""Cyclic MLP: a dense autoencoder that maps an image back onto itself, on recgen's fused Linear.

    P pixels -> Linear(P, H) + relu -> Linear(H, H) + tanh -> Linear(H, P) -> P pixels

Each layer is one recgen.nn.Linear (GEMM, bias and activation in one launch); P = C * H * W
(64 for the 8x8 digits), H = 64. Trained to reconstruct its input with the squared error, so the
output has no activation: reconstructions are shown clipped to [0, 1], the error is measured on
the raw output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recgen import nn as recgen_nn
from recgen.app.models._common import check_positive


class CyclicMLP(nn.Module):
    """x (..., P) -> its reconstruction (..., P), through the bottleneck of width `hidden`.

    >>> net = CyclicMLP(64)
    >>> net(torch.rand(32, 64)).shape
    torch.Size([32, 64])
    >>> loss = net.reconstruction_error(torch.rand(32, 64))   # mean squared error per pixel
    """

    def __init__(self, pixels: int, hidden: int = 64):
        super().__init__()
        check_positive(pixels=pixels, hidden=hidden)
        self.pixels, self.hidden = pixels, hidden
        self.layers = nn.Sequential(recgen_nn.Linear(pixels, hidden, activation="relu"),
                                    recgen_nn.Linear(hidden, hidden, activation="tanh"),
                                    recgen_nn.Linear(hidden, pixels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.pixels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"CyclicMLP: expected input of shape (..., {self.pixels}), got {got}")
        return self.layers(x)

    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """The mean squared error of the reconstruction of x (..., P), over every pixel: the training loss."""
        return F.mse_loss(self(x), x)
