"""Backward kernels of the fused convolution (data gradient with the prologue's backward, weight
gradient) against float64 autograd through recgen.reference.conv.fused_conv2d.

With out_scale/out_shift/residual None and out_act 'none' the reference's output IS the conv
accumulator, so back-propagating a random dacc through it gives the exact dx, d in_centre,
d in_scale, d in_shift and dW the kernels must produce. Outputs are NaN-poisoned before launch (conftest).
"""

import contextlib
import zlib

import pytest
import torch

from recgen.ops import LAUNCH_COUNTS
from recgen.ops.common.tiling import conv_bwd_config, forced_tiles
from recgen.ops.conv.conv2d_bwd import conv2d_bwd_data, conv2d_bwd_weight
from recgen.reference.conv import fused_conv2d
from recgen.testing import DTYPE_NAMES, TOLERANCES, max_rel_error

# Prologues: (in_act, has in_centre, has in_scale, has in_shift). leaky_relu uses slope 0.2 (not
# the default). "centred" is a normalisation's form, (x - mean) * scale + beta.
PROLOGUES = {"relu": ("relu", False, True, True), "leaky": ("leaky_relu", False, True, True),
             "none": ("none", False, False, False), "scale": ("none", False, True, False),
             "shift-relu": ("relu", False, False, True), "centred": ("relu", True, True, True),
             "centre": ("none", True, False, False), "centre-shift-leaky": ("leaky_relu", True, False, True)}
# Per kernel size: (N, CI, CO, H, W). K=5 on 3x4 and K=7 on 4x5 make reflection mirror at both
# edges of both dimensions (PAD = 2 < 3, PAD = 3 < 4) and taps read past the whole image.
SIZES = {1: (2, 3, 5, 7, 10), 3: (2, 5, 12, 7, 10), 5: (2, 12, 3, 3, 4), 7: (1, 3, 5, 4, 5)}


def _geometry_grid():
    """Every K x stride x padding x upsample, the prologue rotating through PROLOGUES."""
    names = list(PROLOGUES)
    cases, i = [], 0
    for K in (1, 3, 5, 7):
        for stride in (1, 2):
            for padding in ("zeros", "reflect"):
                for upsample in (False, True):
                    cases.append((SIZES[K], K, stride, padding, upsample, names[i % len(names)]))
                    i += 1
    return cases


CASES = _geometry_grid() + [
    # channel counts above one 64-wide block, in both kernels
    ((1, 70, 66, 3, 4), 3, 1, "reflect", False, "relu"),
    ((1, 70, 66, 3, 4), 3, 1, "zeros", False, "centred"),
    ((2, 5, 3, 3, 4), 5, 2, "reflect", True, "leaky"),
]
BF16_CASES = [((2, 5, 12, 7, 10), 3, 2, "reflect", True, "leaky"), ((1, 12, 3, 3, 4), 5, 1, "zeros", False, "relu"),
              ((2, 5, 12, 7, 10), 3, 1, "zeros", False, "centred")]


def _case_id(size, K, stride, padding, upsample, prologue, dtype, extra=""):
    N, CI, CO, H, W = size
    up = "-up" if upsample else ""
    return f"K{K}-s{stride}-{padding}{up}-{prologue}-N{N}-C{CI}x{CO}-{H}x{W}-{DTYPE_NAMES[dtype]}{extra}"


def _grid(cases, dtypes, extra=""):
    return [pytest.param(*case, dtype, id=_case_id(*case, dtype, extra)) for case in cases for dtype in dtypes]


def _inputs(size, K, prologue, dtype, device, seed, zero_pre=False):
    N, CI, CO, H, W = size
    gen = torch.Generator().manual_seed(seed)
    act, has_centre, has_scale, has_shift = PROLOGUES[prologue]

    def rnd(*shape, lo=-1.0, hi=1.0):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo).to(device=device, dtype=dtype)

    x = rnd(N, CI, H, W)
    if zero_pre:
        # Exact zeros of x with no shift: pre == 0 exactly, where relu/leaky_relu's derivative is
        # torch's convention (0 for relu, the slope for leaky_relu).
        x = torch.where(rnd(N, CI, H, W) > 0, x, torch.zeros_like(x))
    return {
        "x": x,
        "weight": rnd(CO, CI, K, K, lo=-(CI * K * K) ** -0.5, hi=(CI * K * K) ** -0.5),
        "in_centre": rnd(N, CI, lo=-0.5, hi=0.5) if has_centre and not zero_pre else None,
        "in_scale": rnd(N, CI, lo=0.5, hi=1.5) if has_scale else None,
        "in_shift": rnd(N, CI, lo=-0.5, hi=0.5) if has_shift and not zero_pre else None,
        "in_act": act,
    }


def _check(size, K, stride, padding, upsample, prologue, dtype, device, memory_format=torch.contiguous_format,
           mode=None, zero_pre=False):
    seed = zlib.crc32(repr((size, K, stride, padding, upsample, prologue, zero_pre)).encode())
    inp = _inputs(size, K, prologue, dtype, device, seed, zero_pre)
    geometry = dict(stride=stride, padding_mode=padding, upsample=upsample)
    prologue_args = dict(in_act=inp["in_act"], in_slope=0.2)
    ref = {k: v.detach().to(torch.float64).requires_grad_() for k, v in inp.items() if isinstance(v, torch.Tensor)}
    acc = fused_conv2d(ref["x"], ref["weight"], in_centre=ref.get("in_centre"), in_scale=ref.get("in_scale"),
                       in_shift=ref.get("in_shift"), **geometry, **prologue_args)
    gen = torch.Generator().manual_seed(seed + 1)
    dacc = (torch.rand(acc.shape, generator=gen, dtype=torch.float64) * 2 - 1).to(device=device, dtype=dtype)
    acc.backward(dacc.to(torch.float64))

    x = inp["x"].contiguous(memory_format=memory_format)
    dacc = dacc.contiguous(memory_format=memory_format)
    before = LAUNCH_COUNTS["conv2d_bwd_data"], LAUNCH_COUNTS["conv2d_bwd_weight"]
    with forced_tiles(**mode) if mode else contextlib.nullcontext():
        dx, d_scale, d_shift, d_centre = conv2d_bwd_data(dacc, x, inp["weight"], in_centre=inp["in_centre"],
                                                         in_scale=inp["in_scale"], in_shift=inp["in_shift"],
                                                         **geometry, **prologue_args)
        dw = conv2d_bwd_weight(dacc, x, inp["weight"].shape, in_centre=inp["in_centre"], in_scale=inp["in_scale"],
                               in_shift=inp["in_shift"], **geometry, **prologue_args)
    # The Triton path ran, once per kernel: no silent fallback.
    assert (LAUNCH_COUNTS["conv2d_bwd_data"], LAUNCH_COUNTS["conv2d_bwd_weight"]) == (before[0] + 1, before[1] + 1)
    assert dx.dtype == dtype and dw.dtype == dtype
    assert dx.is_contiguous(memory_format=memory_format)
    assert (d_scale is None) == (inp["in_scale"] is None) and (d_shift is None) == (inp["in_shift"] is None)
    assert (d_centre is None) == (inp["in_centre"] is None)
    errors = {"dx": max_rel_error(dx, ref["x"].grad), "dW": max_rel_error(dw, ref["weight"].grad)}
    if d_scale is not None:
        assert d_scale.dtype == torch.float32
        errors["d_in_scale"] = max_rel_error(d_scale, ref["in_scale"].grad)
    for name, grad in (("in_shift", d_shift), ("in_centre", d_centre)):
        if grad is not None:
            assert grad.dtype == torch.float32
            errors[f"d_{name}"] = max_rel_error(grad, ref[name].grad)
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCES[dtype]}
    assert not bad, f"relative errors above {TOLERANCES[dtype]}: {bad}"
    return errors


@pytest.mark.parametrize("size,K,stride,padding,upsample,prologue,dtype", _grid(CASES, [torch.float32]))
def test_matches_reference(size, K, stride, padding, upsample, prologue, dtype, device):
    _check(size, K, stride, padding, upsample, prologue, dtype, device)


@pytest.mark.parametrize("size,K,stride,padding,upsample,prologue,dtype", _grid(BF16_CASES, [torch.bfloat16]))
def test_bf16(size, K, stride, padding, upsample, prologue, dtype, device):
    """bf16 data and weights, float32 accumulation (on the CPU the interpreter upcasts dots)."""
    _check(size, K, stride, padding, upsample, prologue, dtype, device)


@pytest.mark.parametrize("K,stride,upsample", [(3, 2, True), (5, 1, False)], ids=["K3-s2-up", "K5-s1"])
def test_channels_last(K, stride, upsample, device):
    """x, dacc (and so dx) channels-last: only the strides change."""
    _check((2, 5, 3, 5, 6), K, stride, "reflect", upsample, "leaky", torch.float32, device,
           memory_format=torch.channels_last)


@pytest.mark.parametrize("prologue", ["relu", "leaky"])
def test_activation_derivative_at_zero(prologue, device):
    """pre == 0 exactly at many pixels: relu' = 0 and leaky_relu' = slope there, as torch."""
    _check((2, 5, 3, 5, 6), 3, 1, "zeros", False, prologue, torch.float32, device, zero_pre=True)


@pytest.mark.parametrize("split", [2, 3])
def test_split_reduction_and_small_blocks(split, device):
    """The weight gradient's reduction split into uneven slices (the last ends in a partial
    block), with 16-wide channel blocks: several CI and CO blocks in both kernels."""
    size = (2, 20, 18, 4, 5)  # R = 2 * 8 * 10 = 160 positions: 3 steps of 64, the last partial
    with forced_tiles(conv_bwd_split=split, conv_bwd_channel_block=16):
        cfg = conv_bwd_config(2, 20, 18, 4, 5, 8, 10, 3)
    assert (cfg.block_ci, cfg.block_co, cfg.split) == (16, 16, split)
    _check(size, 3, 1, "reflect", True, "relu", torch.float32, device, mode=dict(conv_bwd_split=split, conv_bwd_channel_block=16))


def test_config_rule():
    """Few output tiles and a long reduction: split; short reductions: one slice; slices cover R."""
    cfg = conv_bwd_config(8, 64, 64, 64, 64, 64, 64, 3)  # 9 tiles, R = 32768 = 512 steps of 64
    assert cfg.split > 1 and (cfg.split - 1) * cfg.r_per_split < 8 * 64 * 64 <= cfg.split * cfg.r_per_split
    assert cfg.r_per_split >= 8 * cfg.block_r
    assert conv_bwd_config(1, 3, 5, 7, 10, 7, 10, 3).split == 1
    assert (cfg.block_p, cfg.block_ci, cfg.block_co) == (64, 64, 64)
    small = conv_bwd_config(1, 3, 5, 2, 3, 2, 3, 1)
    assert (small.block_p, small.block_ci, small.block_co, small.block_r) == (16, 16, 16, 16)
    with pytest.raises(ValueError, match="channel_block must be a power of two >= 16, got 24"):
        with forced_tiles(conv_bwd_channel_block=24):
            pass


def test_empty_batch(device):
    x = torch.zeros(0, 3, 5, 6, device=device)
    dacc = torch.zeros(0, 4, 5, 6, device=device)
    w = torch.zeros(4, 3, 3, 3, device=device)
    dx, d_scale, d_shift, _ = conv2d_bwd_data(dacc, x, w, in_scale=torch.zeros(0, 3, device=device),
                                           in_shift=None, in_act="relu")
    assert dx.shape == x.shape and d_scale.shape == (0, 3) and d_shift is None
    dw = conv2d_bwd_weight(dacc, x, w.shape)
    assert torch.equal(dw, torch.zeros_like(w))


def test_bad_arguments():
    x, w = torch.zeros(1, 3, 5, 6), torch.zeros(4, 3, 3, 3)
    dacc = torch.zeros(1, 4, 5, 6)
    with pytest.raises(ValueError, match="unknown padding_mode 'circular'"):
        conv2d_bwd_data(dacc, x, w, padding_mode="circular")
    with pytest.raises(ValueError, match="unknown in_act 'gelu'"):
        conv2d_bwd_weight(dacc, x, w.shape, in_act="gelu")
    with pytest.raises(ValueError, match="stride must be one of"):
        conv2d_bwd_data(dacc, x, w, stride=3)
    with pytest.raises(RuntimeError, match=r"dacc must have shape \(1, 4, 3, 3\)"):
        conv2d_bwd_weight(dacc, x, w.shape, stride=2)
    with pytest.raises(RuntimeError, match="reflect padding 3 must be smaller than the input size 3"):
        conv2d_bwd_data(torch.zeros(1, 4, 3, 4), torch.zeros(1, 3, 3, 4), torch.zeros(4, 3, 7, 7),
                        padding_mode="reflect")


@pytest.mark.gpu
@pytest.mark.parametrize("size,K,stride,padding,upsample,prologue,dtype",
                         _grid(CASES + [((2, 64, 96, 32, 40), 3, 1, "reflect", True, "leaky"),
                                        ((3, 48, 40, 30, 33), 5, 2, "zeros", False, "relu")],
                               [torch.float32, torch.float16, torch.bfloat16], "-gpu"))
def test_gpu_grid(size, K, stride, padding, upsample, prologue, dtype):
    """The same grid compiled for the GPU in every dtype (true bf16/fp16 dots), plus sizes where
    the default rule splits the weight gradient's reduction."""
    _check(size, K, stride, padding, upsample, prologue, dtype, "cuda")


@pytest.mark.gpu
def test_gpu_channels_last_split():
    _check((4, 32, 48, 24, 20), 3, 2, "reflect", True, "relu", torch.bfloat16, "cuda",
           memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_op_gradients_with_a_centred_prologue(dtype, device):
    """torch.ops.recgen.fused_conv2d's autograd with a normalisation's prologue,
    relu((x - centre) * scale + shift), and statistics: the output, sum and M2 and the gradients
    of x, weight, centre, scale and shift against float64 autograd through the reference, on
    data whose mean is large against its spread (the centre is its mean)."""
    from recgen.functional import fused_conv2d as op_fused_conv2d

    gen = torch.Generator().manual_seed(19)
    N, CI, CO, H, W = 2, 5, 3, 6, 7
    x = (1000 + torch.randn(N, CI, H, W, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype)
    inputs = {"x": x, "weight": (torch.randn(CO, CI, 3, 3, generator=gen, dtype=torch.float64) / 6).to(device, dtype),
              "in_centre": x.double().mean((2, 3)).float(), "in_scale": torch.rand(N, CI, generator=gen).add(0.5),
              "in_shift": torch.randn(N, CI, generator=gen)}
    inputs = {k: v.to(device).requires_grad_() for k, v in inputs.items()}
    exact = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    before = LAUNCH_COUNTS["conv2d_bwd_data"]
    outputs = op_fused_conv2d(**inputs, in_act="relu", stats=True)
    want = fused_conv2d(**exact, in_act="relu", stats=True)
    grads = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in want]
    loss = sum((o.double() * g.to(device)).sum() for o, g in zip(outputs, grads))
    loss.backward()
    sum((o * g).sum() for o, g in zip(want, grads)).backward()
    assert LAUNCH_COUNTS["conv2d_bwd_data"] == before + 1  # the kernels' backward ran
    errors = {name: max_rel_error(o, w) for name, o, w in zip(("out", "sum", "m2"), outputs, want)}
    errors.update({f"d_{k}": max_rel_error(v.grad, exact[k].grad) for k, v in inputs.items()})
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCES[dtype]}
    assert not bad, f"relative errors above {TOLERANCES[dtype]}: {bad}"
