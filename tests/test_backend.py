"""Backend selection and the reference path without triton."""

import os
import subprocess
import sys

import pytest
import torch

import recgen
from recgen.backend import use_triton
from recgen.ops import LAUNCH_COUNTS


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        recgen.set_backend("cuda")


def test_env_variable_sets_initial_backend_and_is_validated():
    code = "import recgen; print(recgen.get_backend())"
    env = dict(os.environ, RECGEN_BACKEND="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "reference", out.stderr
    env["RECGEN_BACKEND"] = "fast"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "RECGEN_BACKEND: unknown backend 'fast'" in bad.stderr


def test_auto_runs_kernels_where_they_can_run(device):
    x = torch.zeros(1, device=device)
    assert use_triton(x)  # CUDA, or the CPU under TRITON_INTERPRET=1 (set by conftest)
    recgen.set_backend("reference")
    assert not use_triton(x)


def test_reference_backend_launches_nothing():
    recgen.set_backend("reference")
    before = sum(LAUNCH_COUNTS.values())
    recgen.nn.LSTM(3, 4)(torch.randn(2, 1, 3))
    assert sum(LAUNCH_COUNTS.values()) == before


def test_package_works_without_triton():
    """With triton unimportable, the package imports and the reference path runs on the CPU."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, recgen\n"
        "y, (h, c) = recgen.nn.LSTM(3, 4)(torch.randn(2, 1, 3))\n"
        "assert y.shape == (2, 1, 4)\n"
        "recgen.set_backend('triton')\n"
        "try:\n"
        "    recgen.nn.LSTM(3, 4)(torch.randn(2, 1, 3))\n"
        "except RuntimeError as e:\n"
        "    print('raised:', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "raised: recgen backend 'triton' was requested but triton is not installed" in out.stdout
