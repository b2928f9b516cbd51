"""FusedConv2dFunction (the fused conv with autograd) against the float64 reference with
autograd: the output, the statistics, and the gradient of every tensor argument."""

import pytest
import torch

from recgen.ops import LAUNCH_COUNTS
from recgen.ops.fused_conv import fused_conv2d
from recgen.reference.conv import fused_conv2d as reference_fused_conv2d
from recgen.testing import TOLERANCES, max_rel_error

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
    "plain-k7": (1, 3, 3, 8, 8, 7, dict(), set()),
}


def _inputs(N, CI, CO, H, W, K, kwargs, present, dtype, gen):
    OH = ((2 * H if kwargs.get("upsample") else H) - 1) // kwargs.get("stride", 1) + 1
    OW = ((2 * W if kwargs.get("upsample") else W) - 1) // kwargs.get("stride", 1) + 1

    def rnd(*shape, low=-1.0, high=1.0):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * (high - low) + low).to(dtype)

    t = {"x": rnd(N, CI, H, W), "weight": rnd(CO, CI, K, K) / K,
         "in_scale": rnd(N, CI, low=0.5, high=1.5), "in_shift": rnd(N, CI),
         "out_scale": rnd(CO, low=0.5, high=1.5), "out_shift": rnd(CO), "residual": rnd(N, CO, OH, OW)}
    return {k: v for k, v in t.items() if k in ("x", "weight") or k in present}


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
    inputs = _inputs(N, CI, CO, H, W, K, kwargs, present, dtype, torch.Generator().manual_seed(len(key)))
    tri = {k: v.detach().clone().to(device) for k, v in inputs.items()}
    tri["x"] = tri["x"].contiguous(memory_format=torch.channels_last)
    tri = {k: v.requires_grad_() for k, v in tri.items()}
    ref = {k: v.detach().to(torch.float64).requires_grad_() for k, v in inputs.items()}
    before = tuple(LAUNCH_COUNTS[n] for n in ("conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_weight"))
    out_t = fused_conv2d(**tri, **kwargs)
    out_r = reference_fused_conv2d(**ref, **kwargs)
    out_t = out_t if isinstance(out_t, tuple) else (out_t,)
    out_r = out_r if isinstance(out_r, tuple) else (out_r,)
    gen = torch.Generator().manual_seed(7)
    grads = [torch.rand(o.shape, generator=gen, dtype=torch.float64) - 0.5 for o in out_r]
    torch.autograd.backward(out_t, [g.to(o.device, o.dtype) for g, o in zip(grads, out_t)])
    torch.autograd.backward(out_r, grads)
    errors = {f"out{i}": max_rel_error(a, b) for i, (a, b) in enumerate(zip(out_t, out_r))}
    errors.update({f"d{k}": max_rel_error(tri[k].grad, ref[k].grad) for k in inputs})
    assert set(errors) == {f"out{i}" for i in range(len(out_r))} | {f"d{k}" for k in inputs}
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCES[dtype]}
    assert not bad, bad
    after = tuple(LAUNCH_COUNTS[n] for n in ("conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_weight"))
    assert after[1] - before[1] == 1 and after[2] - before[2] == 1
