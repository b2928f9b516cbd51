"""recgen.app.sample_scores: the Frechet distance of the digits classifier's features, and the floor
that real digits score. Patterns that the classifier reads confidently (a stripe drawn 64 times)
must land far above that floor; real digits must not."""

import numpy as np
import pytest
import torch

from recgen.app import sample_scores as S
from recgen.app.data import load_digits
from recgen.app.digits_classifier import FEATURES, features, score_samples


def stripes(n=64, columns=(3, 4)):
    """n identical images: white vertical stripe(s) in `columns` on black (columns 3-4 read as a confident 1)."""
    images = torch.zeros(n, 1, 8, 8)
    images[..., list(columns)] = 1.0
    return images


@pytest.fixture(scope="module")
def floor():
    value, count = S.frechet_floor(1000)
    assert count == 1000
    return value


def test_floor_is_small_but_not_zero_and_deterministic(floor):
    assert 0 < floor < 50
    assert S.frechet_floor(1000)[0] == floor  # fixed seed, fixed classifier
    assert S.frechet_floor(1000, seed=1)[0] != floor


def test_real_digits_score_near_the_floor(floor):
    train = load_digits("train")
    for seed in (1, 2):  # other draws of 1000 real digits than the floor's
        index = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))[:1000]
        assert 0.5 * floor < S.digits_frechet(train[index]) < 2 * floor
    test = load_digits("test")
    half = torch.randperm(test.shape[0], generator=torch.Generator().manual_seed(0))
    a, b = test[half[:180]], test[half[180:]]  # two disjoint halves of the held-out digits
    assert S.frechet_distance(features(a), features(b)) < 4 * floor  # small sets: a larger bias, still close


@pytest.mark.parametrize("name,images,margin", [
    ("64 identical vertical stripes", stripes(), 50),
    ("64 identical thin stripes", stripes(columns=(2,)), 50),
    ("64 constant black images", torch.zeros(64, 1, 8, 8), 50),
    ("64 constant grey images", torch.full((64, 1, 8, 8), 0.5), 50),
    ("64 constant white images", torch.ones(64, 1, 8, 8), 50),
    ("64 images of uniform noise", torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)), 10),
    ("1000 images of uniform noise", torch.rand(1000, 1, 8, 8, generator=torch.Generator().manual_seed(2)), 10),
])
def test_non_digits_score_far_above_the_floor(floor, name, images, margin):
    """Measured: stripes and constants 870-1660 (70x-140x the floor of ~12), noise 200-230 (17x-20x);
    64 real digits score ~30 (2.6x: the small-sample bias), so the margins separate them."""
    distance = S.digits_frechet(images)
    assert distance > margin * floor, f"{name}: {distance:.1f} vs floor {floor:.1f}"


def test_a_stripe_the_classifier_trusts_is_still_far(floor):
    """The failure this score exists for: a pattern read with high confidence as one class."""
    images = stripes()
    score = score_samples(images)
    assert score["mean_confidence"] > 0.95 and max(score["histogram"]) == 64
    assert S.digits_frechet(images) > 50 * floor


def test_distance_of_a_set_to_itself_is_zero_and_the_distance_is_symmetric():
    real = features(load_digits("test"))
    noise = features(torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(3)))
    assert real.shape == (359, FEATURES)
    assert S.frechet_distance(real, real) == pytest.approx(0, abs=1e-6)
    assert S.frechet_distance(noise, noise) == pytest.approx(0, abs=1e-6)
    forward, backward = S.frechet_distance(real, noise), S.frechet_distance(noise, real)
    # The two directions factor different covariances (the noise's is ill-conditioned): float64
    # agrees to ~1e-8 relative, by the BLAS (6e-9 on an AMD EPYC with numpy 2.4's OpenBLAS).
    assert forward > 10 and forward == pytest.approx(backward, rel=1e-7)


def test_frechet_of_known_gaussians():
    """Against the closed form: for commuting (diagonal) covariances tr sqrt(S1 S2) = sum sqrt(s1 s2)."""
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 0.0])
    expected = 1 + 0 + 4 + (1 + 4 + 9) + (4 + 1 + 0) - 2 * (2 + 2 + 0)
    assert S.frechet_from_gaussians(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))  # same distance in any basis
    rotated = S.frechet_from_gaussians(rotation @ mu1, rotation @ s1 @ rotation.T, rotation @ mu2,
                                       rotation @ s2 @ rotation.T)
    assert rotated == pytest.approx(expected, rel=1e-9)
    x = np.random.default_rng(1).normal(size=(5000, 3)) @ np.diag([1.0, 2.0, 3.0]) + 5.0
    mu, sigma = S.gaussian(x)
    assert np.allclose(mu, 5.0, atol=0.1) and np.allclose(np.diag(sigma), [1, 4, 9], rtol=0.1)


def test_digits_evaluation_fields():
    ev = S.digits_evaluation(stripes())
    assert ev["samples"] == 64 and ev["histogram"][1] == 64 and ev["classes_present"] == 1
    assert ev["frechet_distance"] > 20 * ev["frechet_floor"] > 0  # the floor of 64 images: ~28, not ~12
    assert ev["frechet_floor"] == S.frechet_floor(64)[0]
    assert "64 real digits of the train split" in ev["frechet_floor_from"]
    assert "359 real test digits" in ev["frechet_reference"]
    text = S.format_evaluation(ev)
    assert "mean confidence" in text and "Frechet distance to the real test digits" in text
    one = S.digits_evaluation(stripes(n=1))
    assert one["frechet_distance"] is None and "Frechet" not in S.format_evaluation(one)


def test_bad_features():
    with pytest.raises(ValueError, match="N >= 2"):
        S.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="mismatched shapes"):
        S.frechet_distance(np.zeros((4, 3)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        S.frechet_distance(np.full((4, 3), np.nan), np.zeros((5, 3)))
