"""Residual GAN: a generator of upsampling residual blocks and a discriminator of strided
residual blocks (the SNGAN/BigGAN-style ResNet GAN, without spectral norm), both on
recgen.nn.ResidualBlock.

Sizes: the generator starts from a 4x4 map (2x2 for 4x4 images) and doubles per block, so
image_size must be a power of two >= 4 (8, 16, 32, 64, ...). Widths halve as the maps grow:
block i of n has base * min(2**(n-i), 8) input channels, the last block ends at `base`.
"""

from __future__ import annotations

import torch
from torch import nn

from recgen import nn as recgen_nn
from recgen.app.models._common import check_positive, normal


def _plan(image_size: int) -> tuple[int, int]:
    """(start size, number of doublings) for a square image of side image_size."""
    check_positive(image_size=image_size)
    start = 2 if image_size == 4 else 4
    if image_size < 4 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 4 (reachable by doubling a 2x2 "
                         f"or 4x4 map: 4, 8, 16, 32, 64, ...), got {image_size}")
    return start, (image_size // start).bit_length() - 1


def _widths(base: int, blocks: int) -> list[int]:
    """Channels at each resolution, coarse to fine (blocks + 1 entries, the last = base)."""
    return [base * min(2 ** (blocks - i), 8) for i in range(blocks + 1)]


class ResidualGenerator(nn.Module):
    """noise (B, noise_dim) -> images (B, channels, image_size, image_size) in (0, 1).

    Linear -> (widths[0], s, s) -> ResidualBlock(upsample=True, norm='batch') per doubling ->
    3x3 conv -> sigmoid.

    >>> g = ResidualGenerator(32, channels=3, base=32)
    >>> g(torch.randn(8, 64)).shape
    torch.Size([8, 3, 32, 32])
    """

    def __init__(self, image_size, channels=1, noise_dim=64, base=64):
        super().__init__()
        check_positive(channels=channels, noise_dim=noise_dim, base=base)
        self.start, blocks = _plan(image_size)
        self.image_size, self.channels, self.noise_dim = image_size, channels, noise_dim
        widths = _widths(base, blocks)
        self.project = nn.Linear(noise_dim, widths[0] * self.start ** 2)
        self.blocks = nn.Sequential(*[recgen_nn.ResidualBlock(c_in, c_out, upsample=True, norm="batch")
                                      for c_in, c_out in zip(widths, widths[1:])])
        self.to_image = nn.Conv2d(widths[-1], channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.noise_dim:
            raise ValueError(f"ResidualGenerator: expected noise of shape (B, {self.noise_dim}), "
                             f"got {tuple(z.shape)}")
        x = self.project(z).view(z.shape[0], -1, self.start, self.start)
        return torch.sigmoid(self.to_image(self.blocks(x)))


class ResidualDiscriminator(nn.Module):
    """images (B, channels, image_size, image_size) -> logits (B,).

    ResidualBlock(stride=2, norm=None, activation='leaky_relu') per halving down to 4x4 (2x2
    for 4x4 images), widths base, 2*base, ... (capped at 8*base), then a linear logit.
    """

    def __init__(self, image_size, channels=1, base=64):
        super().__init__()
        check_positive(channels=channels, base=base)
        end, blocks = _plan(image_size)
        self.image_size, self.channels = image_size, channels
        widths = [channels] + _widths(base, blocks - 1)[::-1]
        self.blocks = nn.Sequential(*[recgen_nn.ResidualBlock(c_in, c_out, stride=2, norm=None,
                                                        activation="leaky_relu")
                                      for c_in, c_out in zip(widths, widths[1:])])
        self.head = nn.Linear(widths[-1] * end ** 2, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        want = (self.channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"ResidualDiscriminator: expected images of shape "
                             f"(B, {', '.join(map(str, want))}), got {tuple(images.shape)}")
        return self.head(self.blocks(images).flatten(1)).squeeze(1)


class ResidualGAN(nn.Module):
    """ResidualGenerator and ResidualDiscriminator for square images of side image_size.

    >>> gan = ResidualGAN(16, channels=3, base=32)
    >>> logits = gan.discriminator(gan.generator(gan.noise(4, device='cpu')))   # (4,)
    """

    def __init__(self, image_size, channels=1, noise_dim=64, base=64):
        super().__init__()
        self.noise_dim = noise_dim
        self.generator = ResidualGenerator(image_size, channels, noise_dim, base)
        self.discriminator = ResidualDiscriminator(image_size, channels, base)

    def noise(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """(n, noise_dim) standard normal noise, on the model's device unless `device` is given."""
        device = self.generator.project.weight.device if device is None else device
        return normal((n, self.noise_dim), generator, device)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images (n, C, S, S) in (0, 1) from fresh noise; call in eval mode for BatchNorm's
        running statistics (GenerativeModel.sample does)."""
        check_positive(n=n)
        return self.generator(self.noise(n, generator))
