"""Helpers shared by the image models: argument checks and seeded noise on any device."""

from __future__ import annotations

import torch


def check_positive(**values) -> None:
    """ValueError unless every value is an int > 0 (bool excluded)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _draw(fn, shape, generator, device):
    # Drawn on the generator's own device (torch requires them to match), then moved: a CPU
    # generator seeds a CUDA model's samples, and a seed gives the same draws whatever the model's device.
    if generator is None:
        return fn(shape, device=device)
    return fn(shape, generator=generator, device=generator.device).to(device)


def normal(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal noise of `shape` on `device`, drawn from `generator` when given."""
    return _draw(torch.randn, shape, generator, device)


def uniform(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """U[0, 1) noise of `shape` on `device`, drawn from `generator` when given."""
    return _draw(torch.rand, shape, generator, device)


def image_rows(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, C*W): one time step per image row, all channels of the row together."""
    B, C, H, W = images.shape
    return images.permute(0, 2, 1, 3).reshape(B, H, C * W)


def rows_to_images(rows: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, H, C*W) -> (B, C, H, W); inverse of image_rows."""
    B, H, CW = rows.shape
    return rows.reshape(B, H, channels, CW // channels).permute(0, 2, 1, 3)
