"""Scores of generated 8x8 digits that a stripe pattern cannot pass: the Frechet distance.

recgen.app.digits_classifier's mean confidence and class histogram read each sample on its own, so a
generator that draws one confident-looking pattern (64 identical vertical stripes scored 0.85) passes
them. The Frechet distance (the FID of Heusel et al. 2017, with the digits classifier in place of
Inception) compares the distribution of the classifier's penultimate-layer features of the samples
with that of the real held-out test digits: each set is summarised by its mean and covariance and

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)

A set of identical images has no spread and a mean far from the digits' mean: a large distance.
The floor is what real digits score: FLOOR_IMAGES-many (the number of samples scored, at most the
1438 of the split) images of the training split, drawn with a fixed seed, against the same test split.
A generator that reproduced the training digits exactly would score the floor.

    from recgen.app.sample_scores import digits_evaluation, frechet_distance
    ev = digits_evaluation(model.sample(1000))   # {'frechet_distance': ..., 'frechet_floor': ..., ...}

numpy only (no scipy): the trace of sqrt(S1 S2) is the sum of the square roots of the eigenvalues of
the symmetric PSD matrix sqrt(S1) S2 sqrt(S1) (same eigenvalues as S1 S2), in float64.
"""

from __future__ import annotations

import numpy as np
import torch

FLOOR_SEED = 0
REFERENCE = "test"  # the real digits every set is compared with
FLOOR_FROM = "train"
FEATURES_NOTE = "the 64 ReLU units after the hidden Linear"


def _as_float64(features) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("features contain NaN or infinite values")
    return array


def gaussian(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), covariance (D, D), unbiased) of features (N, D), in float64."""
    array = _as_float64(features)
    return array.mean(axis=0), np.cov(array, rowvar=False).reshape(array.shape[1], array.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_from_gaussians(mu1, sigma1, mu2, sigma2) -> float:
    """The Frechet distance (squared, as FID reports it) between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched shapes: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return float(max(distance, 0.0))  # rounding can leave -1e-13 for a set against itself


def frechet_distance(features1, features2) -> float:
    """The Frechet distance between two sets of features (N1, D) and (N2, D) (torch or numpy).

        frechet_distance(x, x)   # ~0
    """
    return frechet_from_gaussians(*gaussian(features1), *gaussian(features2))


_reference_cache: dict = {}


def _reference():
    """(mean, covariance, count) of the classifier features of the real test digits (once per process)."""
    if "test" not in _reference_cache:
        from recgen.app.data import load_digits
        from recgen.app.digits_classifier import features

        real = features(load_digits(REFERENCE))
        _reference_cache["test"] = (*gaussian(real), real.shape[0])
    return _reference_cache["test"]


def digits_frechet(images: torch.Tensor) -> float:
    """Frechet distance between the classifier features of images (N, 1, 8, 8) in [0, 1] (N >= 2) and
    those of the real test digits."""
    from recgen.app.digits_classifier import features

    mu, sigma, _ = _reference()
    return frechet_from_gaussians(*gaussian(features(images)), mu, sigma)


def frechet_floor(n: int = 1000, seed: int = FLOOR_SEED) -> tuple[float, int]:
    """(the floor, images used): the Frechet distance of min(n, 1438) training digits (drawn without
    replacement with `seed`) to the test digits: what real digits score, at about the sample count."""
    from recgen.app.data import load_digits

    train = load_digits(FLOOR_FROM)
    count = max(2, min(n, train.shape[0]))
    order = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))[:count]
    return digits_frechet(train[order.sort().values]), count


def digits_evaluation(samples: torch.Tensor) -> dict:
    """Every score of generated digits (N, 1, 8, 8) in [0, 1]: {'samples', 'mean_confidence',
    'histogram', 'classes_present', 'largest_class_fraction', 'frechet_distance', 'frechet_floor',
    'frechet_reference', 'frechet_floor_from', 'real_test_mean_confidence', 'classifier_test_accuracy'}.
    With one sample the Frechet fields are None (no covariance) and the two descriptions are left out."""
    from recgen.app.data import load_digits
    from recgen.app.digits_classifier import accuracy, score_samples

    score = score_samples(samples)
    histogram = score["histogram"]
    n = samples.shape[0]
    if n < 2:  # one sample has no covariance
        frechet = {"frechet_distance": None, "frechet_floor": None}
    else:
        floor, floor_count = frechet_floor(n)
        frechet = {"frechet_distance": digits_frechet(samples), "frechet_floor": floor,
                   "frechet_reference": f"digits classifier penultimate-layer features ({FEATURES_NOTE}) of "
                                        f"the {_reference()[2]} real test digits",
                   "frechet_floor_from": f"{floor_count} real digits of the train split (seed {FLOOR_SEED}) "
                                         "against the same test digits"}
    return {"samples": n, "mean_confidence": score["mean_confidence"], "histogram": histogram,
            "classes_present": sum(1 for c in histogram if c > 0),
            "largest_class_fraction": max(histogram) / n,
            **frechet,
            "real_test_mean_confidence": score_samples(load_digits("test"))["mean_confidence"],
            "classifier_test_accuracy": accuracy()}



def format_evaluation(ev: dict) -> str:
    """The lines `recgen train` prints for an evaluation (a dict of digits_evaluation, or an older
    evaluation.json without the Frechet fields)."""
    classes = " ".join(f"{digit}:{count}" for digit, count in enumerate(ev["histogram"]))
    text = (f"digits classifier (test accuracy {ev['classifier_test_accuracy']:.3f}) on {ev['samples']} samples: "
            f"mean confidence {ev['mean_confidence']:.3f} (real test digits: {ev['real_test_mean_confidence']:.3f})\n"
            f"class histogram {classes} ({ev['classes_present']} classes present, the largest holds "
            f"{ev['largest_class_fraction']:.0%})")
    if ev.get("frechet_distance") is not None:
        floor = ev["frechet_floor"]
        ratio = f", x{ev['frechet_distance'] / floor:.1f} the floor" if floor > 0 else ""
        text += (f"\nFrechet distance to the real test digits {ev['frechet_distance']:.3g} (real-vs-real floor "
                 f"{floor:.3g}{ratio})")
    return text
