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
from recgen.ops import _launch  # noqa: E402
from recgen.testing import full_float32  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
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
