"""recgen's float32 dots follow the TF32 flag of the torch op each kernel stands in for
(recgen.ops.common.launch.torch_allows_tf32, dot_flags), and full_float32 turns TF32 off for torch and
recgen alike, then restores the flags."""

import pytest
import torch

from recgen.ops.common import launch as _launch
from recgen.ops.common.launch import dot_flags, torch_allows_tf32
from recgen.ops import LAUNCH_COUNTS
from recgen.testing import TF32_TOLERANCE, TOLERANCES, compare_direction, full_float32, random_direction_inputs

NEW_API = hasattr(torch.backends.cudnn, "rnn") and hasattr(torch.backends.cudnn.rnn, "fp32_precision")


@pytest.fixture
def restored_flags():
    """Each test here sets torch's flags; put them back afterwards."""
    if not NEW_API:
        pytest.skip("torch without fp32_precision settings")
    objs = [torch.backends.cudnn.rnn, torch.backends.cudnn.conv, torch.backends.cudnn,
            torch.backends.cuda.matmul, torch.backends]
    saved = [o.fp32_precision for o in objs]
    yield
    for o, value in zip(objs, saved):
        o.fp32_precision = value


def test_each_op_follows_its_own_torch_flag(restored_flags):
    backends = torch.backends
    backends.cudnn.rnn.fp32_precision, backends.cudnn.conv.fp32_precision = "tf32", "ieee"
    backends.cuda.matmul.fp32_precision = "ieee"
    assert (torch_allows_tf32("rnn"), torch_allows_tf32("conv"), torch_allows_tf32("matmul")) == (True, False, False)
    backends.cudnn.rnn.fp32_precision, backends.cudnn.conv.fp32_precision = "ieee", "tf32"
    assert (torch_allows_tf32("rnn"), torch_allows_tf32("conv")) == (False, True)
    # 'none' defers to the backend's setting, then to the global one.
    backends.cudnn.rnn.fp32_precision, backends.cudnn.fp32_precision = "none", "tf32"
    assert torch_allows_tf32("rnn")
    backends.cudnn.fp32_precision, backends.fp32_precision = "none", "tf32"
    assert torch_allows_tf32("rnn")
    backends.fp32_precision = "none"
    assert not torch_allows_tf32("rnn")
    # The legacy flag writes the new settings: recgen reads the same state either way.
    torch.backends.cudnn.allow_tf32 = True
    assert torch_allows_tf32("rnn") and torch_allows_tf32("conv")
    with pytest.raises(ValueError, match="op must be 'rnn', 'conv' or 'matmul', got 'lstm'"):
        torch_allows_tf32("lstm")


def test_full_float32_turns_tf32_off_and_restores(restored_flags):
    torch.backends.cudnn.rnn.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "tf32"
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    with full_float32():
        assert not any(torch_allows_tf32(op) for op in ("rnn", "conv", "matmul"))
    assert all(torch_allows_tf32(op) for op in ("rnn", "conv", "matmul"))


def test_dot_flags_on_a_gpu(restored_flags, monkeypatch):
    """As on a GPU (not interpreting): float32 dots are TF32 exactly when torch allows it for the
    op; 16-bit dots take their own operands. Under the interpreter always exact float32."""
    monkeypatch.setattr(_launch, "interpreting", lambda: False)
    torch.backends.cudnn.rnn.fp32_precision, torch.backends.cudnn.conv.fp32_precision = "tf32", "ieee"
    assert dot_flags(torch.float32, "rnn") == {"DOT_FP32": True, "INPUT_PRECISION": "tf32"}
    assert dot_flags(torch.float32, "conv") == {"DOT_FP32": True, "INPUT_PRECISION": "ieee"}
    assert dot_flags(torch.bfloat16, "rnn") == {"DOT_FP32": False, "INPUT_PRECISION": "ieee"}
    monkeypatch.setattr(_launch, "interpreting", lambda: True)
    assert dot_flags(torch.float32, "rnn") == {"DOT_FP32": True, "INPUT_PRECISION": "ieee"}
    assert dot_flags(torch.bfloat16, "rnn") == {"DOT_FP32": True, "INPUT_PRECISION": "ieee"}


def test_bench_rows_name_the_tf32_flags(restored_flags):
    from recgen.tools.benchmark import tf32_note

    torch.backends.cudnn.rnn.fp32_precision, torch.backends.cudnn.conv.fp32_precision = "tf32", "ieee"
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    assert tf32_note("recurrent") == "TF32 on for cuDNN rnn and recgen's kernels, off for matmuls (torch's flags)"
    assert tf32_note("residual").startswith("TF32 off for cuDNN conv")


@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_tf32_recurrence_on_gpu(restored_flags, cell):
    """With torch's RNN flag at "tf32" (its default) the float32 recurrence runs TF32 dots: within
    the TF32 tolerance of the float64 reference, and measurably off full float32 (a 256-long dot
    with 10-bit products errs ~50x the float32 tolerance), which shows the flag reached the kernel."""
    torch.backends.cudnn.rnn.fp32_precision = "tf32"
    gen = torch.Generator().manual_seed(5)
    inputs = random_direction_inputs(cell, 16, 16, 256, 256, device="cuda", generator=gen)
    before = LAUNCH_COUNTS[f"{cell.split('_')[0]}_fwd"]
    errors = compare_direction(cell, inputs)
    assert LAUNCH_COUNTS[f"{cell.split('_')[0]}_fwd"] > before
    assert max(errors.values()) <= TF32_TOLERANCE, errors
    assert errors["y"] > TOLERANCES[torch.float32], errors
