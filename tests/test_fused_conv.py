"""FusedConv2dFunction (the fused conv with autograd) against the float64 reference with
autograd: the output, the statistics, and the gradient of every tensor argument."""

import pytest
import torch

from recgen.ops import LAUNCH_COUNTS
from recgen.testing import TOLERANCES, compare_fused_conv

CASES = {  # id -> (N, CI, CO, H, W, K, kwargs, tensors present)
    "epilogue-all-leaky": (2, 3, 5, 7, 10, 3, dict(out_act="leaky_relu", out_slope=0.2),
                           {"out_scale", "out_shift", "residual"}),
    "epilogue-negative-slope": (1, 4, 3, 6, 5, 3, dict(out_act="leaky_relu", out_slope=-0.3),
                                {"out_scale", "out_shift", "residual"}),
    "prologue-relu-reflect-stride2": (2, 5, 4, 7, 9, 3, dict(in_act="relu", padding_mode="reflect", stride=2,
                                                             out_act="relu"), {"in_scale", "in_shift", "out_shift"}),
    "stats-prologue-upsample": (2, 3, 4, 5, 6, 5, dict(in_act="leaky_relu", in_slope=0.1, upsample=True,
                                                       stats=True), {"in_scale", "in_shift", "out_shift"}),
    "stats-scale-k1": (1, 12, 5, 4, 7, 1, dict(stats=True), {"out_scale", "out_shift"}),
    # A normalisation's centred prologue, (x - centre) * scale + shift, with and without a scale.
    "stats-centred-prologue": (2, 5, 4, 6, 7, 3, dict(in_act="relu", stats=True),
                               {"in_centre", "in_scale", "in_shift", "out_shift"}),
    "centre-shift-leaky": (1, 3, 5, 5, 4, 3, dict(in_act="leaky_relu", in_slope=-0.2, padding_mode="reflect"),
                           {"in_centre", "in_shift"}),
    "plain-k7": (1, 3, 3, 8, 8, 7, dict(), set()),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("key", list(CASES))
def test_fused_conv_matches_reference(key, dtype, device):
    _check(key, dtype, device)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("key", list(CASES))
def test_gpu_fused_conv(key, dtype):
    _check(key, dtype, "cuda")


def _check(key, dtype, device):
    N, CI, CO, H, W, K, kwargs, present = CASES[key]
    before = tuple(LAUNCH_COUNTS[n] for n in ("conv2d_bwd_data", "conv2d_bwd_weight"))
    errors = compare_fused_conv((N, CI, H, W), CO, K, kwargs, present, dtype, device, seed=len(key))
    expected = {"out", "dx", "dweight"} | {f"d{n}" for n in present} | ({"sum", "m2"} if kwargs.get("stats") else set())
    assert set(errors) == expected
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCES[dtype]}
    assert not bad, bad
    after = tuple(LAUNCH_COUNTS[n] for n in ("conv2d_bwd_data", "conv2d_bwd_weight"))
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
