"""Image data for `recgen train`: scikit-learn's bundled digits, or a folder of images.

Every loader returns a float32 tensor of shape (N, C, H, W) with values in [0, 1].

    from recgen.app.data import load_dataset
    images = load_dataset("digits")          # (1438, 1, 8, 8): the training split
    images = load_dataset("faces/")          # every png/jpg/jpeg/bmp/gif in faces/, sorted by name
    images, what = load_heldout("digits")    # (359, 1, 8, 8): the test split, for a reconstruction error

scikit-learn and pillow are imported inside the functions that need them (the `train` extra),
so importing this module stays cheap.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

DIGITS_SHAPE = (1, 8, 8)
DIGITS_TEST_FRACTION = 0.2
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLITS = ("train", "test", "all")
# channels -> the pillow mode images are converted to
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_GRAYSCALE_MODES = ("L", "1")  # 1-bit images are grayscale too: pillow maps them to 0/255 in 'L'


@functools.lru_cache(maxsize=1)
def _digits_arrays():
    """scikit-learn's 1797 digits as (images (N,1,8,8) float32 in [0,1], labels (N,) int64), read once."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return images, labels


def _split_indices(n: int, split: str, seed: int) -> torch.Tensor:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if split == "all":
        return torch.arange(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * DIGITS_TEST_FRACTION))
    # sorted so that a split keeps the dataset's own order: stable across torch versions' sort
    return order[:n_test].sort().values if split == "test" else order[n_test:].sort().values


def load_digits_with_labels(split: str = "train", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8x8 digits of scikit-learn with their labels: (images (N,1,8,8) float32 in [0,1], labels (N,) int64).

    `split` is 'train' (80%), 'test' (20%) or 'all'; the split is a fixed permutation drawn from
    `seed`, so train and test never overlap for the same seed.

        images, labels = load_digits_with_labels("test")   # (359, 1, 8, 8), (359,)
    """
    images, labels = _digits_arrays()
    index = _split_indices(images.shape[0], split, seed)
    return images[index].clone(), labels[index].clone()


def load_digits(split: str = "train", seed: int = 0) -> torch.Tensor:
    """The 8x8 digits of scikit-learn as (N, 1, 8, 8) float32 in [0, 1]; see `load_digits_with_labels`."""
    return load_digits_with_labels(split, seed)[0]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_image_folder(path, channels: int | None = None) -> torch.Tensor:
    """Every image in a folder (not its subfolders) as (N, C, H, W) float32 in [0, 1], sorted by file name.

    Accepted: .png .jpg .jpeg .bmp .gif (any case; a GIF gives its first frame). With `channels`
    None the images load as grayscale (C=1) when every one of them is grayscale, else as RGB (C=3);
    `channels` = 1, 3 or 4 converts every image to L, RGB or RGBA. All images must have one size.

        images = load_image_folder("sprites/", channels=3)   # (N, 3, H, W)
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{str(folder)!r} is not a folder of images")
    if channels is not None and channels not in _MODES:
        raise ValueError(f"channels must be one of {sorted(_MODES)} (or None to choose from the images), "
                         f"got {channels!r}")
    files = _image_files(folder)
    if not files:
        raise ValueError(f"no images in folder {str(folder)!r}: expected files ending in "
                         f"{', '.join(IMAGE_EXTENSIONS)}")
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                image.load()
                images.append(image.copy())
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot read image {str(file)!r}: {error}") from error
    first, first_size = files[0], images[0].size
    for file, image in zip(files, images):
        if image.size != first_size:
            raise ValueError(
                f"images in {str(folder)!r} differ in size: {first.name} is {first_size[0]}x{first_size[1]} "
                f"but {file.name} is {image.size[0]}x{image.size[1]} (width x height); resize them to one size")
    if channels is None:
        channels = 1 if all(image.mode in _GRAYSCALE_MODES for image in images) else 3
    mode = _MODES[channels]
    width, height = first_size
    out = torch.empty(len(images), channels, height, width, dtype=torch.float32)
    for i, image in enumerate(images):
        # via 'RGBA' first so that palette images with transparency convert without pillow's warning
        converted = image.convert("RGBA").convert(mode) if image.mode == "P" else image.convert(mode)
        pixels = torch.frombuffer(bytearray(converted.tobytes()), dtype=torch.uint8)
        out[i] = pixels.view(height, width, channels).permute(2, 0, 1).float() / 255.0
    return out


def load_dataset(spec: str) -> torch.Tensor:
    """The images behind `recgen train --data SPEC`: 'digits' (the training split of scikit-learn's
    digits, (1438, 1, 8, 8)) or the path of a folder of images (see `load_image_folder`).

        images = load_dataset("digits")
    """
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"dataset spec must be 'digits' or a folder path, got {type(spec).__name__}")
    if str(spec) == "digits":
        return load_digits("train")
    if not Path(spec).exists():
        raise FileNotFoundError(f"--data {str(spec)!r}: no such folder (use 'digits' or a folder of images)")
    return load_image_folder(spec)


def load_heldout(spec: str) -> tuple[torch.Tensor, str]:
    """The images a reconstruction model (cyclic-mlp) is scored and shown on for `--data SPEC`, and
    what they are: for 'digits' the test split (359 images, disjoint from the training split that
    load_dataset gives); a folder has no held-out split, so its own images, which it also trains on.

        images, what = load_heldout("digits")   # (359, 1, 8, 8), "the 359 images of the digits test split ..."
    """
    if isinstance(spec, (str, Path)) and str(spec) == "digits":
        images = load_digits("test")
        return images, (f"the {images.shape[0]} images of the digits test split (held out: "
                        "disjoint from the training split)")
    images = load_dataset(spec)
    return images, f"the {images.shape[0]} images of {str(spec)!r} (not held out: a folder has no test split)"
