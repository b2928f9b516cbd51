"""Residual blocks: the fused pipeline and modules against the reference block (the block's own
torch modules and plain torch ops): outputs, BatchNorm running statistics, and the gradients of
the input and of every weight, bias and norm parameter, in train and eval."""

import copy

import pytest
import torch
from torch import nn

import recgen
from recgen.functional import residual as blocks
from recgen.check import HALF_BLOCK_OVERRIDES, half_precision_safe
from recgen.ops import LAUNCH_COUNTS
from recgen.reference import residual as reference
from recgen.testing import TOLERANCES, compare_block, max_rel_error, randomise_norms
from standin_blocks import BasicBlock, ResnetBlock

CONFIGS = {  # id -> (ResidualBlock kwargs, in_channels)
    "bn": (dict(norm="batch"), 3),
    "in": (dict(norm="instance"), 5),
    "in-noaffine-reflect-noact": (dict(norm="instance", affine=False, padding_mode="reflect",
                                       out_activation=False), 3),
    "nonorm-leaky-scale": (dict(norm=None, activation="leaky_relu", residual_scale=0.3), 3),
    "bn-stride2-proj": (dict(norm="batch", out_channels=5, stride=2), 3),
    "in-up-proj-reflect": (dict(norm="instance", out_channels=4, upsample=True, padding_mode="reflect"), 5),
    "bn-k5": (dict(norm="batch", kernel_size=5), 3),
}


def _compare(block, x, train, dtype=torch.float32, device="cpu"):
    errors = compare_block(block, x, train, dtype, device)
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCES[dtype]}
    assert not bad, f"relative errors above {TOLERANCES[dtype]}: {bad}"


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("key", list(CONFIGS))
def test_pipeline_logic_with_reference_ops(key, train):
    """The fused pipeline's norm/statistics/folding logic, run on the reference ops in float64,
    equals the unfused reference block: isolates the pipeline from the kernels."""
    kwargs, cin = CONFIGS[key]
    torch.manual_seed(0)
    block = recgen.nn.ResidualBlock(cin, **kwargs).double()
    randomise_norms(block)
    block.train(train)
    ref = copy.deepcopy(block)
    x = torch.randn(2, cin, 7, 10, dtype=torch.float64, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    recgen.set_backend("reference")
    out = blocks.residual_block(x, training=train, **block._block_parts())
    expected = reference.residual_block(xr, training=train, **ref._block_parts())
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-10)
    for p, q in zip(block.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10)
    for b, c in zip(block.buffers(), ref.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("key", list(CONFIGS))
def test_block_matches_reference(key, train, device):
    kwargs, cin = CONFIGS[key]
    torch.manual_seed(1)
    block = recgen.nn.ResidualBlock(cin, **kwargs).to(device)
    randomise_norms(block)
    before = LAUNCH_COUNTS["conv2d_fwd"]
    _compare(block, torch.randn(2, cin, 7, 10), train, device=device)
    assert LAUNCH_COUNTS["conv2d_fwd"] > before  # the Triton convolution ran


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_block_half_precision(dtype, device):
    """Kink-free activation in half precision: see recgen.check.HALF_BLOCK_OVERRIDES."""
    torch.manual_seed(2)
    block = recgen.nn.ResidualBlock(5, norm="batch", **HALF_BLOCK_OVERRIDES).to(device, dtype)
    randomise_norms(block)
    _compare(block, torch.randn(1, 5, 6, 7), True, dtype=dtype, device=device)


def _launches():
    return LAUNCH_COUNTS["conv2d_fwd"], LAUNCH_COUNTS["affine_act_fwd"]


@pytest.mark.parametrize("train,expected", [(False, (2, 0)), (True, (2, 1))], ids=["eval", "train"])
def test_batchnorm_block_passes_over_memory(train, expected, device):
    """Eval: two conv kernels and nothing else. Training: two conv kernels and one elementwise pass."""
    block = recgen.nn.ResidualBlock(4, norm="batch").to(device).train(train)
    x = torch.randn(2, 4, 5, 6, device=device)
    before = _launches()
    with torch.no_grad():
        block(x)
    after = _launches()
    assert (after[0] - before[0], after[1] - before[1]) == expected


def _model():
    down = nn.Sequential(nn.Conv2d(3, 5, 1, 2, bias=False), nn.BatchNorm2d(5))
    return nn.Sequential(BasicBlock(3, 3), BasicBlock(3, 5, 2, down), nn.Conv2d(5, 4, 1),
                         ResnetBlock(4), ResnetBlock(4, "zero", nn.BatchNorm2d, use_bias=False),
                         ResnetBlock(4, "replicate"), ResnetBlock(4, use_dropout=True))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_convert_swaps_known_blocks_and_keeps_results_and_gradients(train, device):
    torch.manual_seed(3)
    model = _model().to(device)
    randomise_norms(model)
    original = copy.deepcopy(model).double().train(train)  # the float64 reference
    params = {n: p for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    report = []
    recgen.convert(model, report)
    assert [(n, c) for n, c in report] == [("0", "BasicBlock"), ("1", "BasicBlock"), ("3", "ResnetBlock"),
                                           ("4", "ResnetBlock"), ("6", "ResnetBlock")]
    assert isinstance(model[0], recgen.nn.FusedBasicBlock) and isinstance(model[3], recgen.nn.FusedResnetBlock)
    assert type(model[5]) is ResnetBlock  # replication padding: not supported, left alone
    assert list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())
    model.train(train)
    if train:  # the dropout block is random in training: compare the deterministic prefix
        model, original = model[:6], original[:6]
    x = torch.randn(2, 3, 8, 9, device=device, requires_grad=True)
    x_orig = x.detach().double().requires_grad_()
    out, expected = model(x), original(x_orig)
    grad = torch.randn_like(expected)
    out.backward(grad.float())
    expected.backward(grad)
    # Errors compound through the chain of seven blocks (torch's own fp32 conv in it is off by
    # 4e-5 from float64), so the chain gets ten times the single-op float32 tolerance.
    tol = 10 * TOLERANCES[torch.float32]
    errors = {"out": max_rel_error(out, expected), "dx": max_rel_error(x.grad, x_orig.grad)}
    largest = max(q.grad.abs().max().item() for q in original.parameters())
    for (name, p), q in zip(model.named_parameters(), original.parameters()):
        if q.grad.abs().max() < 1e-9:  # a conv bias before InstanceNorm: exactly zero in theory
            errors[f"|d{name}|"] = p.grad.abs().max().item() / largest
        else:
            errors[f"d{name}"] = max_rel_error(p.grad, q.grad)
    for (name, b), c in zip(model.named_buffers(), original.buffers()):
        errors[name] = max_rel_error(b.float(), c.float())
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, bad


def test_block_bad_input_raises_before_launch(device):
    block = recgen.nn.ResidualBlock(3, norm="batch", padding_mode="reflect", kernel_size=5).to(device)
    torch_conv = nn.Conv2d(3, 3, 5, padding=2, padding_mode="reflect").to(device)
    before = dict(LAUNCH_COUNTS)
    cases = [
        (torch.randn(2, 4, 7, 7, device=device), RuntimeError, "to have 3 channels, but got 4"),
        (torch.randn(3, 7, 7, device=device), ValueError, "expected a 4-D input"),
        (torch.randn(2, 3, 7, 7, device=device, dtype=torch.float64), RuntimeError, "input dtype torch.float64"),
        (torch.randn(2, 3, 2, 7, device=device), RuntimeError, "reflection padding 2 must be less"),
    ]
    for x, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            block(x)
        with pytest.raises(exc):  # what torch's own layers raise for it
            torch_conv(x) if x.dim() == 4 else nn.BatchNorm2d(3).to(device)(x)
    assert dict(LAUNCH_COUNTS) == before
    for kwargs, msg in [(dict(norm="group"), "norm must be one of"), (dict(stride=3), "stride must be one of"),
                        (dict(kernel_size=4), "kernel_size must be odd"), (dict(activation="gelu"), "activation")]:
        with pytest.raises(ValueError, match=msg):
            recgen.nn.ResidualBlock(3, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("key", list(CONFIGS))
def test_gpu_block_grid(key, dtype, train):
    kwargs, cin = CONFIGS[key]
    torch.manual_seed(4)
    kwargs = kwargs if dtype == torch.float32 else half_precision_safe(kwargs)
    block = recgen.nn.ResidualBlock(cin, **kwargs).to("cuda", dtype)
    randomise_norms(block)
    _compare(block, torch.randn(4, cin, 19, 23), train, dtype=dtype, device="cuda")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_converted_resnet_block_with_dropout_draws_torchs_masks(norm, layout, device):
    """A seeded training step of a converted CycleGAN ResnetBlock with dropout gives torch's
    outputs and gradients: the mask is drawn over the layout torch's block holds the activation
    in (the input's), so the same seed drops the same elements. The kernels run (launches)."""
    torch.manual_seed(0)
    norm_layer = nn.InstanceNorm2d if norm == "instance" else nn.BatchNorm2d
    theirs = ResnetBlock(4, norm_layer=norm_layer, use_dropout=True).to(device).train()
    ours = recgen.convert(copy.deepcopy(theirs))
    x = torch.randn(2, 4, 6, 7, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    before = sum(LAUNCH_COUNTS.values())
    torch.manual_seed(7)
    out = ours(x_ours)
    assert sum(LAUNCH_COUNTS.values()) > before and recgen.backend.implementation_of(ours) != "torch"
    torch.manual_seed(7)
    expected = theirs(x_theirs)
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    tol = TOLERANCES[torch.float32]
    assert max_rel_error(out, expected) <= tol
    assert max_rel_error(x_ours.grad, x_theirs.grad) <= tol
    largest = max(q.grad.abs().max().item() for q in theirs.parameters())
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        if q.grad.abs().max() <= tol * largest:  # a conv bias before a norm: zero, up to rounding
            assert p.grad.abs().max() <= tol * largest, name
        else:
            assert max_rel_error(p.grad, q.grad) <= tol, name
