"""A small CNN that reads 8x8 digits: the judge of what a generator trained on digits learned.

Trained in about a second on the CPU on the training split of `recgen.app.data.load_digits` (seeded,
deterministic), and kept in memory for the rest of the process. A generator that learned the
digits gives samples the classifier reads confidently, spread over the ten classes; a collapsed
GAN gives one class (or noise that it reads with low confidence).

    from recgen.app.digits_classifier import score_samples
    score = score_samples(model.sample(1000))   # {'mean_confidence': 0.9, 'histogram': [98, 103, ...], ...}
    feats = features(model.sample(1000))        # (1000, 64): the penultimate layer, for the Frechet
                                                # distance of recgen.app.sample_scores
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from recgen.app.data import DIGITS_SHAPE, load_digits_with_labels

N_CLASSES = 10
FEATURES = 64  # width of the penultimate layer (the input of the last Linear)
DEFAULT_EPOCHS = 20
_cache: dict[tuple[int, int], nn.Module] = {}


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) in [0, 1] -> (N, 10) logits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),                       # 8x8 -> 4x4
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(32 * 4 * 4, FEATURES), nn.ReLU(),
                                  nn.Linear(FEATURES, N_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@contextmanager
def _one_thread():
    """Ops this small run fastest on one thread; on a busy machine extra OpenMP threads spin and
    make them up to 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_classifier(epochs: int = DEFAULT_EPOCHS, seed: int = 0, batch_size: int = 64) -> nn.Module:
    """Train (once per process and arguments) the digits CNN on the training split; returns it in eval mode.

    CPU, float32, seeded: the same arguments give the same weights. The global RNG is left as it was.

        clf = train_classifier(); accuracy(clf)   # about 0.98
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    key = (epochs, seed, batch_size)
    if key in _cache:
        return _cache[key]
    images, labels = load_digits_with_labels("train", seed=0)  # the data's split is fixed; `seed` is training's
    with torch.random.fork_rng(devices=[]), _one_thread():
        torch.manual_seed(seed)
        model = DigitsCNN()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        shuffle = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(images.shape[0], generator=shuffle)
            for start in range(0, images.shape[0], batch_size):
                index = order[start:start + batch_size]
                loss = nn.functional.cross_entropy(model(images[index]), labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _cache[key] = model
    return model


def accuracy(model: nn.Module | None = None, split: str = "test") -> float:
    """Fraction of the digits in `split` ('train', 'test', 'all') that `model` (default: the cached
    classifier) labels correctly."""
    model = train_classifier() if model is None else model
    images, labels = load_digits_with_labels(split)
    with torch.no_grad(), _one_thread():
        return (model(images).argmax(1) == labels).float().mean().item()


def _checked(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor, got {type(images).__name__}")
    if images.dim() != 4 or tuple(images.shape[1:]) != DIGITS_SHAPE or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N, 1, 8, 8) with N >= 1, got {tuple(images.shape)}")
    images = images.detach().to("cpu", torch.float32)
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    return images


def features(images: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
    """The classifier's penultimate layer (after the hidden Linear's ReLU) for images (N, 1, 8, 8)
    in [0, 1]: a (N, FEATURES) float32 CPU tensor. What recgen.app.sample_scores' Frechet distance compares.

        real = features(load_digits("test"))   # (359, 64)
    """
    images = _checked(images)
    model = train_classifier() if model is None else model
    with torch.no_grad(), _one_thread():
        return model.head[:-1](model.features(images))


def score_samples(images: torch.Tensor, model: nn.Module | None = None) -> dict:
    """Read generated digits: images (N, 1, 8, 8) with values in [0, 1], on any device.

    Returns {'mean_confidence': mean over images of the largest class probability (float),
    'histogram': how many images fall in each class 0..9 (list of 10 ints),
    'predicted': the class of each image ((N,) int64 tensor, CPU)}.

        score = score_samples(load_digits("test"))   # mean_confidence ~0.97, every class present
    """
    images = _checked(images)
    model = train_classifier() if model is None else model
    with torch.no_grad(), _one_thread():
        probs = torch.softmax(model(images), dim=1)
    confidence, predicted = probs.max(dim=1)
    histogram = torch.bincount(predicted, minlength=N_CLASSES)
    return {"mean_confidence": confidence.mean().item(), "histogram": [int(c) for c in histogram],
            "predicted": predicted}
