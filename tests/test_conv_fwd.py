"""The fused conv forward (recgen.ops.conv.conv2d.conv2d_fwd, one Triton launch) against the float64
reference recgen.reference.conv.fused_conv2d on the same dtype-rounded inputs: the output and,
with stats, the per-(image, channel) sum and M2 (squared deviations from the mean) of z. Outputs
and partial-statistics buffers are NaN-poisoned before launch (conftest), so an unwritten element
fails the comparison.

Ids read N-CI-CO-HxW-K-stride-padding[-up]-prologue-epilogue[-stats]-dtype. Prologues: off;
relu / leaky (in_scale, in_shift, then the activation); scale / shift (one term alone, no
activation); centred (a normalisation's (x - in_centre) * in_scale + in_shift, then relu);
centre (in_centre alone). Epilogues: none; relu / leaky (out_scale, out_shift, residual, then the
activation); shift (out_shift alone, a bias); residual (alone).
"""

import zlib

import pytest
import torch

from recgen.ops import LAUNCH_COUNTS
from recgen.ops.common.tiling import conv_blocks, forced_tiles
from recgen.ops.conv.conv2d import conv2d_fwd
from recgen.reference.conv import fused_conv2d
from recgen.testing import DTYPE_NAMES, TOLERANCES, max_rel_error

FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16
CHANNELS = [(3, 5), (5, 12), (12, 3)]


def case(N, CI, CO, HW, K, stride, padding, up, pro, epi, stats, dtype=FP32, blocks=None):
    """One pytest.param; `blocks` forces (BLOCK_M, BLOCK_CI, BLOCK_CO) tiles."""
    spec = dict(N=N, CI=CI, CO=CO, HW=HW, K=K, stride=stride, padding=padding, up=up, pro=pro,
                epi=epi, stats=stats, dtype=dtype, blocks=blocks)
    return pytest.param(spec, id=_case_id(spec))


def _case_id(s):
    tag = (f"N{s['N']}-CI{s['CI']}-CO{s['CO']}-{s['HW'][0]}x{s['HW'][1]}-K{s['K']}-s{s['stride']}"
           f"-{s['padding']}{'-up' if s['up'] else ''}-{s['pro']}-{s['epi']}{'-stats' if s['stats'] else ''}")
    if s["blocks"]:
        tag += "-blocks" + "x".join(map(str, s["blocks"]))
    return f"{tag}-{DTYPE_NAMES[s['dtype']]}"


# Every geometry (K, stride, padding, upsampling) with both fused ends on and statistics;
# channel pairs and activations rotate so that each also meets several geometries.
GEOMETRY = [
    case(1 if up else 2, *CHANNELS[i % 3], (7, 10), K, stride, padding, up,
         ("leaky", "relu")[i % 2], ("relu", "leaky")[(i // 2) % 2], True)
    for i, (K, stride, padding, up) in enumerate(
        (K, stride, padding, up) for K in (1, 3, 5, 7) for stride in (1, 2)
        for padding in ("zeros", "reflect") for up in (False, True))
]
# Each prologue with each epilogue (zero padding: a shifted prologue must still pad with 0).
FEATURES = [
    case(2, 5, 3, (7, 10), 3, 1, "zeros", False, pro, epi, (i + j) % 2 == 0)
    for i, pro in enumerate(("off", "relu", "leaky", "scale", "shift", "centred", "centre"))
    for j, epi in enumerate(("none", "relu", "leaky", "shift", "residual"))
] + [
    case(1, 3, 5, (7, 10), 3, 2, "reflect", True, pro, epi, True)
    for pro, epi in (("shift", "none"), ("off", "shift"), ("scale", "residual"))
]
SHAPES = [
    case(1, 3, 5, (1, 1), 3, 1, "zeros", False, "leaky", "relu", True),       # a single pixel
    case(1, 3, 5, (1, 1), 3, 2, "zeros", True, "leaky", "relu", True),        # 2x2 after upsampling
    case(2, 5, 3, (2, 3), 5, 1, "reflect", True, "relu", "leaky", True),      # PAD >= H, < 2H
    case(2, 12, 12, (13, 11), 3, 1, "reflect", False, "leaky", "relu", True),  # two M tiles per image
    case(1, 1, 1, (7, 10), 3, 1, "zeros", False, "relu", "leaky", True),      # one channel each
    case(2, 12, 5, (10, 7), 1, 2, "zeros", False, "off", "none", False),
]
# Several tiles along every GEMM dimension: M (5 per image, the stats reduce across them), CI
# (3 chunks, the last partial), CO (3 blocks, the last partial).
MULTI_BLOCK = [
    case(2, 40, 40, (7, 10), 3, 1, "zeros", False, "leaky", "relu", True, blocks=(16, 16, 16)),
    case(1, 40, 36, (7, 10), 3, 2, "reflect", True, "relu", "leaky", True, blocks=(16, 16, 16)),
    case(2, 33, 17, (5, 6), 5, 1, "reflect", False, "shift", "shift", True, blocks=(32, 32, 16)),
    case(2, 40, 36, (7, 10), 3, 1, "reflect", False, "centred", "relu", True, blocks=(16, 16, 16)),
]
HALF = [
    case(2, 5, 12, (7, 10), 3, 1, "zeros", False, "leaky", "relu", True, dtype=dtype)
    for dtype in (FP16, BF16)
] + [
    case(1, 12, 5, (7, 10), 5, 2, "reflect", True, "relu", "leaky", True, dtype=dtype)
    for dtype in (FP16, BF16)
] + [
    case(2, 5, 12, (7, 10), 3, 1, "zeros", False, "centred", "none", True, dtype=dtype)
    for dtype in (FP16, BF16)
]


def _out_size(S, K, stride, up):
    return ((2 * S if up else S) - 1) // stride + 1


def make_inputs(spec, device, x_layout="channels_last", res_layout="contiguous"):
    """Arguments of conv2d_fwd for a case: data in spec['dtype'], per-channel vectors float32."""
    N, CI, CO, (H, W), K = spec["N"], spec["CI"], spec["CO"], spec["HW"], spec["K"]
    gen = torch.Generator().manual_seed(zlib.crc32(_case_id(spec).encode()))

    def rnd(*shape, lo=-1.0, hi=1.0, dtype=spec["dtype"]):
        t = torch.rand(*shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo
        return t.to(device=device, dtype=dtype)

    x = rnd(N, CI, H, W, lo=-2, hi=2)
    if x_layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif x_layout == "strided":  # a non-contiguous view: every other row, a window of columns
        x = rnd(N, CI, 2 * H, W + 3, lo=-2, hi=2).contiguous(memory_format=torch.channels_last)[:, :, ::2, 1:W + 1]
    args = dict(x=x, weight=rnd(CO, CI, K, K, lo=-(CI * K * K) ** -0.5, hi=(CI * K * K) ** -0.5),
                stride=spec["stride"], padding_mode=spec["padding"], upsample=spec["up"], stats=spec["stats"])
    pro, epi = spec["pro"], spec["epi"]
    if pro in ("centred", "centre"):
        args["in_centre"] = rnd(N, CI, lo=-1.0, hi=1.0, dtype=FP32)
    if pro in ("relu", "leaky", "scale", "centred"):
        args["in_scale"] = rnd(N, CI, lo=0.5, hi=1.5, dtype=FP32)
    if pro in ("relu", "leaky", "shift", "centred"):
        args["in_shift"] = rnd(N, CI, lo=-0.5, hi=1.0, dtype=FP32)
    if pro in ("relu", "leaky", "centred"):
        args.update(in_act={"relu": "relu", "leaky": "leaky_relu", "centred": "relu"}[pro], in_slope=0.2)
    if epi in ("relu", "leaky"):
        args.update(out_scale=rnd(CO, lo=0.5, hi=1.5, dtype=FP32), out_act={"relu": "relu", "leaky": "leaky_relu"}[epi],
                    out_slope=0.1)
    if epi in ("relu", "leaky", "shift"):
        args["out_shift"] = rnd(CO, lo=-0.5, hi=0.5, dtype=FP32)
    if epi in ("relu", "leaky", "residual"):
        OH, OW = (_out_size(S, K, spec["stride"], spec["up"]) for S in (H, W))
        residual = rnd(N, CO, OH, OW)
        args["residual"] = residual.contiguous(memory_format=torch.channels_last) \
            if res_layout == "channels_last" else residual
    return args


def check(spec, device, **layouts):
    """Run the kernel once (exactly one launch) and the float64 reference; assert the errors."""
    args = make_inputs(spec, device, **layouts)
    ref = fused_conv2d(**{k: v.to(torch.float64) if isinstance(v, torch.Tensor) else v for k, v in args.items()})
    before = LAUNCH_COUNTS["conv2d_fwd"]
    if spec["blocks"]:
        with forced_tiles(conv=spec["blocks"]):
            got = conv2d_fwd(**args)
    else:
        got = conv2d_fwd(**args)
    assert LAUNCH_COUNTS["conv2d_fwd"] == before + 1
    if not spec["stats"]:
        got, ref = (got,), (ref,)
    out = got[0]
    assert out.dtype == spec["dtype"] and out.device == args["x"].device
    assert out.is_contiguous(memory_format=torch.channels_last)
    errors = {"out": max_rel_error(out, ref[0])}
    if spec["stats"]:
        for name, g, r in zip(("sum", "m2"), got[1:], ref[1:]):
            assert g.dtype == torch.float64 and g.shape == (spec["N"], spec["CO"])  # merged in float64
            errors[name] = max_rel_error(g, r)
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCES[spec["dtype"]]}
    assert not bad, f"relative errors above {TOLERANCES[spec['dtype']]}: {bad}"


@pytest.mark.parametrize("spec", GEOMETRY)
def test_geometry(spec, device):
    check(spec, device)


@pytest.mark.parametrize("spec", FEATURES)
def test_prologue_epilogue(spec, device):
    check(spec, device)


@pytest.mark.parametrize("spec", SHAPES)
def test_shapes(spec, device):
    check(spec, device)


@pytest.mark.parametrize("spec", MULTI_BLOCK)
def test_multi_block(spec, device):
    check(spec, device)


@pytest.mark.parametrize("spec", HALF)
def test_half_precision(spec, device):
    """fp16/bf16 data, float32 accumulation and statistics (the interpreter upcasts the dots)."""
    check(spec, device)


LAYOUT_CASE = case(2, 5, 12, (7, 10), 3, 2, "reflect", True, "leaky", "leaky", True)


@pytest.mark.parametrize("x_layout,res_layout", [
    ("contiguous", "contiguous"), ("strided", "channels_last"), ("channels_last", "channels_last")])
def test_memory_layouts(x_layout, res_layout, device):
    """x and residual in any layout; the output is always channels_last."""
    check(LAYOUT_CASE.values[0], device, x_layout=x_layout, res_layout=res_layout)


def test_default_blocks_rule():
    assert conv_blocks(70, 3, 5) == (128, 16, 16, 4)
    assert conv_blocks(4096, 256, 256) == (128, 32, 64, 8)
    assert conv_blocks(1, 40, 20) == (16, 32, 32, 4)
    with forced_tiles(conv=(16, 16, 16)):
        assert conv_blocks(4096, 256, 256) == (16, 16, 16, 4)
    with pytest.raises(ValueError, match="power of two"):
        with forced_tiles(conv=(8, 16, 16)):
            pass



BAD = [
    pytest.param(dict(weight=(4, 3, 2, 2)), RuntimeError, "K odd", id="even-K"),
    pytest.param(dict(weight=(4, 3, 3, 1)), RuntimeError, "K odd", id="non-square-kernel"),
    pytest.param(dict(weight=(4, 2, 3, 3)), RuntimeError, "CI=3 input channels", id="weight-CI"),
    pytest.param(dict(weight_dtype=FP16), RuntimeError, "weight must have x's dtype", id="weight-dtype"),
    pytest.param(dict(x_dtype=torch.float64), RuntimeError, "x must be one of", id="x-float64"),
    pytest.param(dict(x=(3, 5, 6)), RuntimeError, "x must be 4-D", id="x-3d"),
    pytest.param(dict(stride=3), ValueError, "stride must be one of", id="stride-3"),
    pytest.param(dict(padding_mode="circular"), ValueError, "unknown padding_mode", id="padding-circular"),
    pytest.param(dict(in_act="gelu"), ValueError, "unknown in_act", id="in-act-gelu"),
    pytest.param(dict(out_act="tanh"), ValueError, "unknown out_act", id="out-act-tanh"),
    pytest.param(dict(in_scale=(3,)), RuntimeError, r"in_scale must have shape \(2, 3\), got \(3,\)",
                 id="in-scale-shape"),
    pytest.param(dict(in_shift=(1, 3)), RuntimeError, r"in_shift must have shape \(2, 3\)", id="in-shift-shape"),
    pytest.param(dict(out_scale=(4, 1)), RuntimeError, r"out_scale must have shape \(4,\)", id="out-scale-shape"),
    pytest.param(dict(out_shift=(5,)), RuntimeError, r"out_shift must have shape \(4,\)", id="out-shift-shape"),
    pytest.param(dict(residual=(2, 4, 5, 6)), RuntimeError, r"residual must have shape \(2, 4, 3, 6\)",
                 id="residual-shape"),
    pytest.param(dict(weight=(4, 3, 7, 7), padding_mode="reflect"), RuntimeError,
                 "reflect padding 3 .* input size H=3", id="reflect-pad-too-large"),
]


@pytest.mark.parametrize("changes,error,match", BAD)
def test_bad_arguments_raise_before_launch(changes, error, match, device):
    """x (2, 3, 3, 6), weight (4, 3, 3, 3); each case breaks one thing. Nothing is launched."""
    changes = dict(changes)
    shape = lambda name, default: changes.pop(name, default)  # noqa: E731
    x = torch.randn(*shape("x", (2, 3, 3, 6)), device=device, dtype=changes.pop("x_dtype", FP32))
    weight = torch.randn(*shape("weight", (4, 3, 3, 3)), device=device, dtype=changes.pop("weight_dtype", x.dtype))
    kwargs = {k: torch.randn(*v, device=device) if isinstance(v, tuple) else v for k, v in changes.items()}
    before = LAUNCH_COUNTS["conv2d_fwd"]
    with pytest.raises(error, match=match):
        conv2d_fwd(x, weight, **kwargs)
    assert LAUNCH_COUNTS["conv2d_fwd"] == before


def test_empty_batch_launches_nothing(device):
    x = torch.randn(0, 3, 5, 6, device=device)
    before = LAUNCH_COUNTS["conv2d_fwd"]
    out, s, ss = conv2d_fwd(x, torch.randn(4, 3, 3, 3, device=device), stats=True)
    assert LAUNCH_COUNTS["conv2d_fwd"] == before
    assert out.shape == (0, 4, 5, 6) and s.shape == ss.shape == (0, 4)


# The same grid on the GPU in every dtype (compiled kernels, real bf16/fp16 tensor-core dots),
# plus a realistic size that uses the default (largest) tiles.
GPU_GRID = [
    pytest.param({**p.values[0], "dtype": dtype}, id=_case_id({**p.values[0], "dtype": dtype}))
    for p in GEOMETRY + FEATURES + SHAPES + MULTI_BLOCK + HALF[::2] for dtype in (FP32, FP16, BF16)
] + [
    pytest.param(spec, id=_case_id(spec)) for spec in (
        dict(N=2, CI=64, CO=96, HW=(33, 31), K=3, stride=s, padding=pad, up=up, pro="leaky", epi="relu",
             stats=True, dtype=dtype, blocks=None)
        for dtype in (FP32, FP16, BF16) for s, pad, up in ((1, "reflect", False), (2, "zeros", True)))
]


@pytest.mark.gpu
@pytest.mark.parametrize("spec", GPU_GRID)
def test_gpu_grid(spec):
    check(spec, "cuda")
