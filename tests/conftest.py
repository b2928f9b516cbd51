"""Test set-up: without CUDA the kernels run under Triton's interpreter on the CPU.

TRITON_INTERPRET is read when a kernel is decorated, so it is set here, before any recgen
kernel module is imported. Tests marked `gpu` run only where CUDA is available.
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import recgen  # noqa: E402
from recgen.ops.common import launch as _launch  # noqa: E402
from recgen.testing import full_float32  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"


# Words in a test's file, name or id that put it in an op family: `pytest -k FAMILY` selects
# every test of that family, whatever concern its file is grouped by.
FAMILY_WORDS = {"lstm": ("lstm",), "gru": ("gru",), "rnn": ("rnn", "elman"),
                "residual": ("residual", "block", "conv", "affine", "res_gan", "res-gan", "resnet"),
                "dense": ("dense", "linear_act")}


def pytest_collection_modifyitems(config, items):
    for item in items:
        words = item.nodeid.lower()
        item.extra_keyword_matches.update(family for family, found in FAMILY_WORDS.items()
                                          if any(word in words for word in found))
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_state():
    """Each test starts on the default backend, with outputs poisoned with NaN on every device."""
    recgen.set_backend("auto")
    _launch.POISON["on"] = True
    yield
    recgen.set_backend("auto")
    _launch.POISON["on"] = False


@pytest.fixture(autouse=True)
def _full_fp32_everywhere():
    """Comparisons are against full float32: on the GPU torch's cuDNN RNNs and convolutions use
    TF32 by default, and recgen's kernels follow the same flags."""
    with full_float32():
        yield


@pytest.fixture
def device():
    return DEVICE
