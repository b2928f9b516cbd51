"""recgen.app.data (scikit-learn's digits, folders of images) and recgen.app.digits_classifier."""

import pytest
import torch
from PIL import Image

from recgen.app import data, digits_classifier
from recgen.app.data import load_dataset, load_digits, load_digits_with_labels, load_image_folder
from recgen.app.digits_classifier import accuracy, score_samples, train_classifier

N_DIGITS = 1797


# ----------------------------------------------------------------------------------------- digits
@pytest.mark.parametrize("split,n", [("train", 1438), ("test", 359), ("all", N_DIGITS)])
def test_digits_shapes_ranges_and_split_sizes(split, n):
    images, labels = load_digits_with_labels(split)
    assert images.shape == (n, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert images.min().item() == 0.0 and images.max().item() == 1.0
    assert torch.equal(images * 16, (images * 16).round())  # the 0..16 levels, divided by 16
    assert sorted(labels.unique().tolist()) == list(range(10))
    assert torch.equal(load_digits(split), images)


def test_digits_split_is_a_fixed_partition_that_depends_on_the_seed():
    train, test = data._split_indices(N_DIGITS, "train", 0), data._split_indices(N_DIGITS, "test", 0)
    assert len(set(train.tolist()) & set(test.tolist())) == 0
    assert sorted(train.tolist() + test.tolist()) == list(range(N_DIGITS))
    assert torch.equal(train, data._split_indices(N_DIGITS, "train", 0))
    assert not torch.equal(test, data._split_indices(N_DIGITS, "test", 1))
    all_images, all_labels = load_digits_with_labels("all")
    images, labels = load_digits_with_labels("test", seed=0)
    assert torch.equal(images, all_images[test]) and torch.equal(labels, all_labels[test])


def test_digits_copies_do_not_alias_the_cache():
    images = load_digits("all")
    images.zero_()
    assert load_digits("all").max().item() == 1.0


def test_digits_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'valid'; expected one of train, test, all"):
        load_digits("valid")


# ---------------------------------------------------------------------------------------- folders
def _png(path, values, mode="L"):
    """Write an image of `values` (list of rows of ints, or of RGB tuples) to `path`."""
    height, width = len(values), len(values[0])
    image = Image.new(mode, (width, height))
    image.putdata([v for row in values for v in row])
    image.save(path)
    return path


def test_folder_grayscale_sorted_with_exact_values(tmp_path):
    _png(tmp_path / "b.png", [[0, 255, 128], [10, 20, 30]])
    _png(tmp_path / "a.PNG", [[255, 0, 0], [0, 0, 51]])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "sub" / "c.png", [[1, 2, 3], [4, 5, 6]])  # subfolders are not read
    images = load_image_folder(tmp_path)
    assert images.shape == (2, 1, 2, 3) and images.dtype == torch.float32
    expected = torch.tensor([[[255, 0, 0], [0, 0, 51]], [[0, 255, 128], [10, 20, 30]]]) / 255.0
    torch.testing.assert_close(images[:, 0], expected, rtol=0, atol=0)


def test_folder_rgb_when_any_image_is_colour_and_other_formats(tmp_path):
    _png(tmp_path / "1.png", [[0, 255]])
    _png(tmp_path / "2.bmp", [[(255, 0, 0), (0, 0, 255)]], mode="RGB")
    _png(tmp_path / "3.gif", [[0, 255]])
    Image.new("RGB", (2, 1), (200, 100, 50)).save(tmp_path / "4.jpeg", quality=100)
    Image.new("L", (2, 1), 77).save(tmp_path / "5.jpg", quality=100)
    images = load_image_folder(tmp_path)
    assert images.shape == (5, 3, 1, 2)
    torch.testing.assert_close(images[1, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]), rtol=0, atol=0)
    torch.testing.assert_close(images[0, :, 0, 1], torch.ones(3), rtol=0, atol=0)  # gray -> equal channels
    torch.testing.assert_close(images[3, :, 0, 0], torch.tensor([200, 100, 50]) / 255.0, rtol=0, atol=3 / 255)
    assert 0.0 <= images.min().item() and images.max().item() <= 1.0


def test_folder_channels_override(tmp_path):
    _png(tmp_path / "a.png", [[(255, 255, 255), (0, 0, 0)]], mode="RGB")
    gray = load_image_folder(tmp_path, channels=1)
    assert gray.shape == (1, 1, 1, 2)
    torch.testing.assert_close(gray[0, 0, 0], torch.tensor([1.0, 0.0]), rtol=0, atol=0)
    assert load_image_folder(tmp_path, channels=4).shape == (1, 4, 1, 2)
    with pytest.raises(ValueError, match=r"channels must be one of \[1, 3, 4\].*got 2"):
        load_image_folder(tmp_path, channels=2)


def test_folder_missing(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=f"image folder '{missing}' does not exist"):
        load_image_folder(missing)


def test_folder_is_a_file(tmp_path):
    file = _png(tmp_path / "a.png", [[0]])
    with pytest.raises(NotADirectoryError, match="is not a folder of images"):
        load_image_folder(file)


def test_folder_without_images_names_folder_and_extensions(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(ValueError, match=f"no images in folder '{tmp_path}'.*.png, .jpg, .jpeg, .bmp, .gif"):
        load_image_folder(tmp_path)


def test_folder_mixed_sizes_names_two_files_and_sizes(tmp_path):
    _png(tmp_path / "a.png", [[0, 0, 0], [0, 0, 0]])
    _png(tmp_path / "b.png", [[0, 0, 0], [0, 0, 0]])
    _png(tmp_path / "c.png", [[0, 0], [0, 0], [0, 0]])
    with pytest.raises(ValueError, match=r"a.png is 3x2 but c.png is 2x3 \(width x height\)"):
        load_image_folder(tmp_path)


def test_folder_unreadable_image_is_named(tmp_path):
    _png(tmp_path / "a.png", [[0]])
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_image_folder(tmp_path)


def test_load_dataset(tmp_path):
    assert torch.equal(load_dataset("digits"), load_digits("train"))
    _png(tmp_path / "a.png", [[0, 255]])
    assert load_dataset(str(tmp_path)).shape == (1, 1, 1, 2)
    assert load_dataset(tmp_path).shape == (1, 1, 1, 2)
    with pytest.raises(FileNotFoundError, match="--data 'mnist': no such folder"):
        load_dataset("mnist")


# ------------------------------------------------------------------------------------- classifier
def test_classifier_accuracy_above_090():
    model = train_classifier()
    assert accuracy(model, "test") > 0.9
    assert accuracy(split="test") == accuracy(model)  # the default is the cached classifier
    assert train_classifier() is model


def test_classifier_is_seeded_and_leaves_global_state(monkeypatch):
    monkeypatch.setattr(digits_classifier, "_cache", {})
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    a = train_classifier(epochs=1, seed=5)
    monkeypatch.setattr(digits_classifier, "_cache", {})
    b = train_classifier(epochs=1, seed=5)
    c = train_classifier(epochs=1, seed=6)
    assert a is not b
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        train_classifier(epochs=0)


def test_score_samples_on_real_test_digits_is_confident_and_spread():
    images, labels = load_digits_with_labels("test")
    score = score_samples(images)
    assert set(score) == {"mean_confidence", "histogram", "predicted"}
    assert score["mean_confidence"] > 0.9
    assert len(score["histogram"]) == 10 and sum(score["histogram"]) == len(images)
    assert all(isinstance(c, int) for c in score["histogram"])
    assert sum(c > 0 for c in score["histogram"]) == 10
    assert score["predicted"].shape == labels.shape and (score["predicted"] == labels).float().mean() > 0.9


def test_score_samples_shows_a_collapsed_generator_as_one_class():
    images, labels = load_digits_with_labels("test")
    threes = images[labels == 3]
    one_image = threes[:1].expand(200, -1, -1, -1)  # a mode-collapsed "generator"
    score = score_samples(one_image)
    assert max(score["histogram"]) == 200 and sum(c > 0 for c in score["histogram"]) == 1
    noise = score_samples(torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert noise["mean_confidence"] < score_samples(images)["mean_confidence"]


@pytest.mark.parametrize("bad,error,match", [
    (torch.rand(4, 1, 16, 16), ValueError, r"shape \(N, 1, 8, 8\).*got \(4, 1, 16, 16\)"),
    (torch.rand(0, 1, 8, 8), ValueError, "N >= 1"),
    (torch.full((2, 1, 8, 8), float("nan")), ValueError, "NaN"),
    ([[0.0]], TypeError, "images must be a tensor, got list"),
])
def test_score_samples_bad_input(bad, error, match):
    with pytest.raises(error, match=match):
        score_samples(bad)
