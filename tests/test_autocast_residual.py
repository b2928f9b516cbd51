"""Residual blocks under torch.autocast follow the torch modules they replace (measured on torch
2.13, see recgen/functional/residual.py): conv2d in the autocast dtype, batch/instance norm with float32
statistics and a low-precision output, float32 running statistics, float32 parameter gradients,
and a residual add that promotes (a low-precision norm2 output + a float32 identity skip is
float32; with a projection skip the block's output stays low precision).

Each block runs its fused Triton pipeline under autocast and is compared with torch's modules
(the stand-ins below for torchvision's BasicBlock and the CycleGAN ResnetBlock; recgen's
reference path, plain torch ops, for ResidualBlock) under the same autocast context. Two
comparisons per case: the block as it is (with its ReLU kinks), forward only: output dtype and
values, running statistics; and a kink-free variant (recgen.check.HALF_BLOCK_OVERRIDES), with
gradients: two half-precision computations can put a value within rounding of a ReLU kink on
different sides, and after ReLU the conv input has a per-channel offset that the norms'
half-precision backward cancels badly, so gradients there compare rounding noise, not kernels.
"""

import copy

import pytest
import torch
from torch import nn

import recgen
from recgen.check import HALF_BLOCK_OVERRIDES, half_precision_safe
from recgen.ops import LAUNCH_COUNTS
from recgen.testing import TOLERANCES, max_rel_error, randomise_norms
from standin_blocks import BasicBlock, ResnetBlock


def _basic(stride):
    down = None if stride == 1 else nn.Sequential(nn.Conv2d(4, 6, 1, stride, bias=False), nn.BatchNorm2d(6))
    return BasicBlock(4, 4 if stride == 1 else 6, stride, down)


# id -> (builder of the torch module, or ResidualBlock kwargs; in_channels; output dtype under
# bf16 autocast for a float32 input)
CASES = {
    "residual-batch": (dict(norm="batch"), 4, torch.float32),
    "residual-instance": (dict(norm="instance"), 4, torch.float32),
    "basic": (lambda: _basic(1), 4, torch.float32),
    "basic-down2": (lambda: _basic(2), 4, torch.bfloat16),
    "resnet-reflect": (lambda: ResnetBlock(4), 4, torch.float32),
}
# Conv biases followed by a norm with batch statistics: exactly zero gradient in theory, so
# rounding noise in both; checked to be negligible instead of compared.
ZERO_GRAD = {"conv_block.1.bias", "conv_block.5.bias"}
DTYPES = [pytest.param(torch.bfloat16, id="bf16"),
          pytest.param(torch.float16, id="fp16", marks=pytest.mark.gpu)]


def _kink_free_parts(block):
    """block._block_parts with the kink-free activation (the same fused code path)."""
    parts = type(block)._block_parts
    block._block_parts = lambda: {**parts(block), **HALF_BLOCK_OVERRIDES}


def _pair(key, device, kink_free):
    """(recgen block, torch block, run_torch) in the same state on `device`."""
    spec, _, _ = CASES[key]
    if isinstance(spec, dict):  # ResidualBlock: its torch counterpart is the reference path
        block = recgen.nn.ResidualBlock(4, **(half_precision_safe(spec) if kink_free else spec))
        randomise_norms(block)
        block = block.to(device)
        return block, copy.deepcopy(block), True
    ref = spec()
    randomise_norms(ref)
    ref = ref.to(device)
    block = recgen.convert(copy.deepcopy(ref))
    assert type(block).__name__.startswith("Fused")
    if kink_free:
        _kink_free_parts(block)
        if isinstance(ref, BasicBlock):
            ref.relu = nn.Identity()
        else:
            ref.conv_block[3] = nn.Identity()
    return block, ref, False


def _run(block, ref, reference_backend, x, device, dtype, grad=True):
    """Both blocks on copies of x under autocast: (recgen out, torch out, x copies). Checks
    that recgen's convolutions ran on Triton, input and weight in the autocast dtype."""
    xs = [x.detach().clone().requires_grad_(grad) for _ in range(2)]
    before = LAUNCH_COUNTS["conv2d_fwd"]
    conv_dtypes = []
    fused_conv2d = recgen.functional.residual._kernel_fused_conv2d

    def recording(x, weight, **kwargs):
        conv_dtypes.append((x.dtype, weight.dtype))
        return fused_conv2d(x, weight, **kwargs)

    with torch.set_grad_enabled(grad), torch.autocast(device_type=device, dtype=dtype):
        with recgen.backend.backend("triton"), pytest.MonkeyPatch.context() as patch:
            patch.setattr(recgen.functional.residual, "_kernel_fused_conv2d", recording)  # the blocks' convs
            out = block(xs[0])
        assert LAUNCH_COUNTS["conv2d_fwd"] > before  # the fused Triton pipeline ran
        assert conv_dtypes and set(conv_dtypes) == {(dtype, dtype)}, conv_dtypes
        with recgen.backend.backend("reference" if reference_backend else "auto"):
            expected = ref(xs[1])
    return out, expected, xs


def _buffer_errors(block, ref):
    errors = {}
    for (name, b), c in zip(block.named_buffers(), ref.buffers()):
        assert b.dtype == c.dtype, name
        errors[name] = max_rel_error(b.double(), c.double())
    return errors


def _check(errors, dtype):
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCES[dtype]}
    assert not bad, f"relative errors above {TOLERANCES[dtype]}: {bad}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("key", list(CASES))
def test_block_follows_torch_autocast(key, train, dtype, device):
    _, cin, out_dtype = CASES[key]
    if dtype == torch.float16:
        out_dtype = torch.float16 if out_dtype == torch.bfloat16 else out_dtype
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, cin, 6, 6, generator=gen).to(device)

    # As it is (ReLU kinks): forward only.
    torch.manual_seed(1)
    block, ref, reference_backend = _pair(key, device, kink_free=False)
    block.train(train), ref.train(train)
    out, expected, _ = _run(block, ref, reference_backend, x, device, dtype, grad=False)
    assert expected.dtype == out_dtype  # what torch does (recorded in CASES)
    assert out.dtype == expected.dtype
    _check({"out": max_rel_error(out, expected), **_buffer_errors(block, ref)}, dtype)

    # Kink-free: forward and backward.
    torch.manual_seed(2)
    block, ref, reference_backend = _pair(key, device, kink_free=True)
    block.train(train), ref.train(train)
    out, expected, (xa, xb) = _run(block, ref, reference_backend, x, device, dtype)
    assert out.dtype == expected.dtype == out_dtype
    g = torch.rand(out.shape, generator=gen).to(device) - 0.5
    out.backward(g.to(out.dtype))
    expected.backward(g.to(expected.dtype))
    errors = {"out": max_rel_error(out, expected), "dx": max_rel_error(xa.grad, xb.grad),
              **_buffer_errors(block, ref)}
    assert xa.grad.dtype == xb.grad.dtype == x.dtype
    params = list(zip(block.named_parameters(), ref.parameters()))
    largest = max(q.grad.abs().max().item() for _, q in params)
    for (name, p), q in params:
        assert p.dtype == p.grad.dtype == q.grad.dtype == torch.float32, name
        if name in ZERO_GRAD:
            errors[f"|d{name}|"] = max(p.grad.abs().max().item(), q.grad.abs().max().item()) / largest
        else:
            errors[f"d{name}"] = max_rel_error(p.grad, q.grad)
    _check(errors, dtype)


def test_bf16_input_with_float32_module(device):
    """bf16 input, float32 module: the identity skip is bf16 like the conv output, so the block
    stays bf16 (torch's add does not promote); the fused path accepts the weight/input dtype
    mismatch only under autocast, as torch's conv does."""
    torch.manual_seed(3)
    block = recgen.nn.ResidualBlock(4, **half_precision_safe(dict(norm="batch"))).to(device)
    x = torch.randn(2, 4, 6, 6, device=device, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="does not match the weight dtype"):
        block(x)
    out, expected, _ = _run(block, copy.deepcopy(block), True, x, device, torch.bfloat16, grad=False)
    assert out.dtype == expected.dtype == torch.bfloat16
    assert max_rel_error(out, expected) <= TOLERANCES[torch.bfloat16]


@pytest.mark.parametrize("train,expected", [(False, (2, 1)), (True, (2, 2))], ids=["eval", "train"])
def test_wider_skip_passes_over_memory(train, expected, device):
    """A float32 identity skip under bf16 autocast: the residual add leaves conv2's epilogue
    (eval) or norm2's pass (training) for one more elementwise pass, as recgen/functional/residual.py says."""
    block = recgen.nn.ResidualBlock(4, norm="batch").to(device).train(train)
    x = torch.randn(2, 4, 5, 6, device=device)
    before = LAUNCH_COUNTS["conv2d_fwd"], LAUNCH_COUNTS["affine_act_fwd"]
    with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16):
        assert block(x).dtype == torch.float32
    after = LAUNCH_COUNTS["conv2d_fwd"], LAUNCH_COUNTS["affine_act_fwd"]
    assert (after[0] - before[0], after[1] - before[1]) == expected


@pytest.mark.gpu
def test_gradscaler_fp16_training_steps_match_torch():
    """Two optimizer steps of a two-block model with fp16 autocast and GradScaler: recgen's
    fused blocks and the same blocks on torch's ops end with the same parameters. The updates
    themselves (lr * gradient) are compared too, at twice the fp16 tolerance: both sides are
    half-precision computations, each within TOLERANCES[float16] of the exact value."""
    torch.manual_seed(4)
    model = nn.Sequential(
        recgen.nn.ResidualBlock(4, **half_precision_safe(dict(norm="batch"))),
        recgen.nn.ResidualBlock(4, 8, stride=2, **half_precision_safe(dict(norm="instance"))),
    ).cuda()
    randomise_norms(model)
    start = [p.detach().clone() for p in model.parameters()]
    runs = []
    for backend in ("triton", "reference"):
        net = copy.deepcopy(model)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 10)
        gen = torch.Generator(device="cuda").manual_seed(5)
        launches = LAUNCH_COUNTS["conv2d_fwd"]
        with recgen.backend.backend(backend):
            for _ in range(2):
                x = torch.randn(4, 4, 8, 8, device="cuda", generator=gen)
                with torch.autocast("cuda", dtype=torch.float16):
                    y = net(x)
                    assert y.dtype == torch.float16  # the projection block's output
                    loss = y.float().square().mean()
                scaler.scale(loss).backward()
                assert all(p.grad.dtype == torch.float32 for p in net.parameters())
                scaler.step(opt)
                scaler.update()
                opt.zero_grad()
        assert (LAUNCH_COUNTS["conv2d_fwd"] > launches) == (backend == "triton")
        assert scaler.get_scale() == 2.0 ** 10  # no step skipped for an overflow
        runs.append(([p.detach().clone() for p in net.parameters()],
                     [b.detach().clone() for b in net.buffers()]))
    (params, buffers), (ref_params, ref_buffers) = runs
    tol = TOLERANCES[torch.float16]
    for p, q, p0 in zip(params, ref_params, start):
        assert max_rel_error(p, q) <= tol
        assert max_rel_error(p - p0, q - p0) <= 2 * tol
    for b, c in zip(buffers, ref_buffers):
        assert max_rel_error(b.double(), c.double()) <= tol
