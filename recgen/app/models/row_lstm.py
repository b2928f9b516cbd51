"""Row LSTM: an autoregressive image model that emits one image row per time step.

The LSTM reads rows 0..t-1 (a learned start row stands in for row -1) and predicts row t, each
pixel an independent Bernoulli given the rows above (a row-level PixelRNN: pixels within a row
are conditionally independent). Grayscale or RGB values in [0, 1] are the Bernoulli means, so
the loss is binary cross-entropy with logits against the (possibly soft) pixel values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recgen import nn as recgen_nn
from recgen.app.models._common import check_positive, image_rows, rows_to_images, uniform


class RowLSTMGenerator(nn.Module):
    """p(x) = prod_t p(row_t | rows_<t), rows of C*W Bernoulli pixels.

    forward(images (B, C, H, W) in [0, 1]) -> logits (B, C, H, W) of each pixel given the rows above.
    sample(n) -> (n, C, H, W) binary images in {0, 1}, drawn row by row.

    >>> model = RowLSTMGenerator(8, 8, hidden=64)
    >>> loss = model.nll(torch.rand(16, 1, 8, 8))   # nats per image
    >>> images = model.sample(4, generator=torch.Generator().manual_seed(0))
    """

    def __init__(self, height, width, channels=1, hidden=128, num_layers=2):
        super().__init__()
        check_positive(height=height, width=width, channels=channels, hidden=hidden,
                       num_layers=num_layers)
        self.height, self.width, self.channels = height, width, channels
        row = channels * width
        # Learned row -1; zeros is a neutral start (the LSTM sees no image yet).
        self.start = nn.Parameter(torch.zeros(row))
        self.lstm = recgen_nn.LSTM(row, hidden, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden, row)

    def _check(self, images):
        want = (self.channels, self.height, self.width)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != want:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"RowLSTMGenerator: expected images of shape (B, {', '.join(map(str, want))}), "
                             f"got {got}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> logits (B, C, H, W); logits[:, :, t] depend only on rows < t."""
        self._check(images)
        rows = image_rows(images)                                   # (B, H, C*W)
        start = self.start.to(rows.dtype).expand(rows.shape[0], 1, -1)
        inputs = torch.cat([start, rows[:, :-1]], dim=1)            # teacher forcing: shift by one row
        out, _ = self.lstm(inputs)
        return rows_to_images(self.head(out), self.channels)

    def nll(self, images: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood in nats per image (summed over pixels, averaged over the batch)."""
        logits = self(images)
        return F.binary_cross_entropy_with_logits(logits, images, reduction="sum") / images.shape[0]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images (n, C, H, W) with values in {0, 1}, each row drawn given the rows drawn before
        it; the (h, c) state is carried across single-step LSTM calls."""
        check_positive(n=n)
        x = self.start.expand(n, 1, -1)
        state = None
        rows = []
        for _ in range(self.height):
            out, state = self.lstm(x, state)
            probs = torch.sigmoid(self.head(out))                  # (n, 1, C*W)
            x = (uniform(probs.shape, generator, probs.device) < probs).to(probs.dtype)
            rows.append(x)
        return rows_to_images(torch.cat(rows, dim=1), self.channels)
