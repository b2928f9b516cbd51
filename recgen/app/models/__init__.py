"""Image generative models on recgen.nn's layers, behind one training interface.

    model = build_model("res-gan", (3, 32, 32), base=32)     # image_shape = (C, H, W)
    optimizers = model.make_optimizers()
    for images in loader:                                    # (B, C, H, W) in [0, 1]
        losses = model.train_step(images, optimizers)        # {'d_loss': ..., 'g_loss': ...}
    images = model.sample(64, generator=torch.Generator().manual_seed(0))
    twin = model.torch_twin()                                # the same model on torch.nn's layers

MODELS: "row-lstm" (autoregressive LSTM over rows, Bernoulli pixels), "rnn-gan" (LSTM generator,
LSTM/GRU discriminator over rows), "res-gan" (residual-block generator and discriminator),
"cyclic-mlp" (a dense autoencoder on recgen.nn.Linear: it reconstructs images rather than
sampling them, `model.reconstruct(images)`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recgen.app.models._common import check_positive
from recgen.app.models.cyclic_mlp import CyclicMLP
from recgen.app.models.res_gan import ResidualDiscriminator, ResidualGAN, ResidualGenerator
from recgen.app.models.rnn_gan import RecurrentGAN
from recgen.app.models.row_lstm import RowLSTMGenerator
from recgen.app.models.twin import TorchLinear, TorchResidualBlock, torch_twin

REAL_LABEL = 0.9  # one-sided label smoothing: real targets only; fakes stay at 0


class GenerativeModel(nn.Module):
    """Base of the models: `image_shape` (C, H, W), `name`, and the training interface."""

    name: str = ""

    def __init__(self, image_shape):
        super().__init__()
        shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else None
        if shape is None or len(shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}")
        check_positive(channels=shape[0], height=shape[1], width=shape[2])
        self.image_shape = shape

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def train_step(self, images: torch.Tensor, optimizers: dict) -> dict[str, float]:
        """One full update on a batch (B, C, H, W) in [0, 1]; puts the model in training mode."""
        raise NotImplementedError

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, C, H, W) images in [0, 1], drawn in eval mode (the previous mode is restored);
        the same seeded `generator` gives the same images."""
        check_positive(n=n)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self._sample(n, generator)
        finally:
            self.train(was_training)

    def torch_twin(self) -> GenerativeModel:
        """A deep copy on torch.nn's layers (recgen.app.models.twin.torch_twin), same weights."""
        return torch_twin(self)

    def _check_images(self, images):
        if not isinstance(images, torch.Tensor) or images.dim() != 4 \
                or tuple(images.shape[1:]) != self.image_shape:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"{type(self).__name__}: expected images of shape (B, "
                             f"{', '.join(map(str, self.image_shape))}), got {got}")

    @staticmethod
    def _optimizer(optimizers, key):
        if key not in optimizers:
            raise KeyError(f"train_step needs the optimizer {key!r} (from make_optimizers()), "
                           f"got {sorted(optimizers)}")
        return optimizers[key]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, image_shape={self.image_shape}"


class RowLSTMModel(GenerativeModel):
    """recgen.app.models.row_lstm.RowLSTMGenerator; losses {'nll': nats per image}.
    Options: hidden=128, num_layers=2."""

    name = "row-lstm"

    def __init__(self, image_shape, hidden=128, num_layers=2):
        super().__init__(image_shape)
        C, H, W = self.image_shape
        self.net = RowLSTMGenerator(H, W, C, hidden=hidden, num_layers=num_layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> per-pixel logits (B, C, H, W) given the rows above."""
        return self.net(images)

    def make_optimizers(self):
        return {"model": torch.optim.Adam(self.parameters(), lr=1e-3)}

    def train_step(self, images, optimizers):
        self._check_images(images)
        opt = self._optimizer(optimizers, "model")
        self.train()
        opt.zero_grad(set_to_none=True)
        loss = self.net.nll(images)
        loss.backward()
        opt.step()
        return {"nll": loss.item()}

    def _sample(self, n, generator):
        return self.net.sample(n, generator)


class _GANModel(GenerativeModel):
    """Shared GAN update; subclasses set self.net with .generator, .discriminator, .noise()."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """noise (B, noise_dim) -> images (B, C, H, W) in (0, 1)."""
        return self.net.generator(z)

    def make_optimizers(self):
        def adam(module):
            return torch.optim.Adam(module.parameters(), lr=2e-4, betas=(0.5, 0.999))
        return {"generator": adam(self.net.generator), "discriminator": adam(self.net.discriminator)}

    def train_step(self, images, optimizers):
        """One discriminator step, then one generator step on the same fake batch.
        d_loss = BCE(D(x), 0.9) + BCE(D(G(z)), 0); g_loss = BCE(D(G(z)), 1) (non-saturating)."""
        self._check_images(images)
        g_opt = self._optimizer(optimizers, "generator")
        d_opt = self._optimizer(optimizers, "discriminator")
        G, D = self.net.generator, self.net.discriminator
        self.train()
        fake = G(self.net.noise(images.shape[0], device=images.device))

        d_opt.zero_grad(set_to_none=True)
        real_logits, fake_logits = D(images), D(fake.detach())
        d_loss = (F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, REAL_LABEL))
                  + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        d_loss.backward()
        d_opt.step()

        g_opt.zero_grad(set_to_none=True)
        D.requires_grad_(False)  # the generator's loss needs no gradient for D's weights
        try:
            gen_logits = D(fake)
            g_loss = F.binary_cross_entropy_with_logits(gen_logits, torch.ones_like(gen_logits))
            g_loss.backward()
        finally:
            D.requires_grad_(True)
        g_opt.step()
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item(),
                "d_real": torch.sigmoid(real_logits).mean().item(),
                "d_fake": torch.sigmoid(fake_logits).mean().item()}

    def _sample(self, n, generator):
        return self.net.sample(n, generator)


class RecurrentGANModel(_GANModel):
    """recgen.app.models.rnn_gan.RecurrentGAN. Options: noise_dim=32, hidden=128, discriminator='lstm'|'gru'."""

    name = "rnn-gan"

    def __init__(self, image_shape, noise_dim=32, hidden=128, discriminator="lstm"):
        super().__init__(image_shape)
        C, H, W = self.image_shape
        self.net = RecurrentGAN(H, W, C, noise_dim=noise_dim, hidden=hidden, discriminator=discriminator)


class ResidualGANModel(_GANModel):
    """recgen.app.models.res_gan.ResidualGAN, square images of side 4, 8, 16, 32, 64, ...
    Options: noise_dim=64, base=64."""

    name = "res-gan"

    def __init__(self, image_shape, noise_dim=64, base=64):
        super().__init__(image_shape)
        C, H, W = self.image_shape
        if H != W:
            raise ValueError(f"res-gan needs square images, got image_shape {self.image_shape}")
        self.net = ResidualGAN(H, C, noise_dim=noise_dim, base=base)


class CyclicMLPModel(GenerativeModel):
    """recgen.app.models.cyclic_mlp.CyclicMLP over the C*H*W pixels of an image, trained to
    reconstruct it (squared error, Adam 1e-3); losses {'mse': mean squared error per pixel}.
    An autoencoder, not a generator: `reconstruct(images)` instead of `sample(n)`, which raises.
    Options: hidden=64.

    >>> model = build_model("cyclic-mlp", (1, 8, 8))
    >>> model.reconstruct(torch.rand(4, 1, 8, 8)).shape
    torch.Size([4, 1, 8, 8])
    """

    name = "cyclic-mlp"

    def __init__(self, image_shape, hidden=64):
        super().__init__(image_shape)
        C, H, W = self.image_shape
        self.net = CyclicMLP(C * H * W, hidden=hidden)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> reconstructions (B, C, H, W), the raw output (not clipped)."""
        self._check_images(images)
        return self.net(images.flatten(1)).view(images.shape)

    def make_optimizers(self):
        return {"model": torch.optim.Adam(self.parameters(), lr=1e-3)}

    def train_step(self, images, optimizers):
        self._check_images(images)
        opt = self._optimizer(optimizers, "model")
        self.train()
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(self(images), images)
        loss.backward()
        opt.step()
        return {"mse": loss.item()}

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstructions (B, C, H, W) of images in [0, 1], in eval mode without gradients (the
        previous mode is restored); the raw output, which the squared error is measured on."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self(images)
        finally:
            self.train(was_training)

    def _sample(self, n, generator):
        raise TypeError("cyclic-mlp is an autoencoder: it reconstructs images (model.reconstruct(images)) "
                        "and draws no samples")


MODELS = {"row-lstm": RowLSTMModel, "rnn-gan": RecurrentGANModel, "res-gan": ResidualGANModel,
          "cyclic-mlp": CyclicMLPModel}


def build_model(name: str, image_shape: tuple[int, int, int], **options) -> GenerativeModel:
    """The model `name` (a key of MODELS) for images of shape (C, H, W); options go to its
    constructor (e.g. hidden=64 for row-lstm, base=32 for res-gan).

    >>> model = build_model("rnn-gan", (1, 8, 8), discriminator="gru")
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choices: {', '.join(MODELS)}")
    return MODELS[name](image_shape, **options)


__all__ = [
    "MODELS", "build_model", "GenerativeModel", "RowLSTMModel", "RecurrentGANModel", "ResidualGANModel",
    "CyclicMLPModel", "RowLSTMGenerator", "RecurrentGAN", "ResidualGAN", "ResidualGenerator",
    "ResidualDiscriminator", "CyclicMLP", "TorchLinear", "TorchResidualBlock", "torch_twin",
]
