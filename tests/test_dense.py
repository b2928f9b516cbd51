"""The dense layer: act(x @ W^T + bias + residual) in fused Triton kernels (kernels/dense/linear.py),
through recgen.ops.dense.linear (launchers, torch.ops.recgen.linear_act / linear_bwd_data /
linear_bwd_weight, LinearActFunction), recgen.functional.linear_act and recgen.nn.Linear.

Kernels against the float64 reference (recgen.reference.dense.linear_act) on the same
dtype-rounded inputs: the output and every gradient (x, weight, bias, residual), each activation,
with and without bias and residual, odd sizes (B=1, I and O not powers of two, 3-D input), float32,
float16 and bfloat16, with recgen.testing.TOLERANCES. Outputs are NaN-poisoned before every launch
(conftest; the int8 sign bits with 2), so an unwritten element fails. Then: NaN/Inf positions as
torch's, bad input raising torch.nn.Linear's exception types and words, opcheck of every op,
torch.compile(fullgraph=True), the double backward, and recgen.convert's fusion.

Ids read dense-B<rows>-I<in>-O<out>-<activation>[-nobias][-res][-tiles16]-<dtype>; a 3-D input's
rows read 2x3. Sizes are tiny: under TRITON_INTERPRET=1 every launch runs as Python on the CPU.
"""

import copy
import io
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import recgen
from recgen.backend import backend, implementation_of
from recgen.ops import LAUNCH_COUNTS
from recgen.ops.common.tiling import (dense_blocks, dense_bwd_data_blocks, dense_bwd_weight_config, dense_tiles,
                                      forced_tiles)
from recgen.ops.dense.linear import linear_bwd_data, linear_bwd_weight, linear_fwd
from recgen.reference.dense import linear_act as reference_linear_act
from recgen.testing import DTYPE_NAMES, TOLERANCES, compare_dense, max_rel_error

import like_torch
from like_torch import VALUES, assert_all_match, set_element

FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16
TOL = TOLERANCES[FP32]
# id -> (activation, negative_slope): leakyneg is the sign-bit path of a negative slope.
ACTS = {"none": ("none", 0.01), "relu": ("relu", 0.01), "leaky": ("leaky_relu", 0.2),
        "leakyneg": ("leaky_relu", -0.3), "tanh": ("tanh", 0.01), "sigmoid": ("sigmoid", 0.01)}
KERNELS = ("linear_fwd", "linear_bwd_data", "linear_bwd_weight")
pytestmark = like_torch.pytestmark


def case(lead, I, O, act, bias=True, res=False, dtype=FP32, tiles=False, split=None):
    """One pytest.param; `tiles` forces 16 x 16 x 16 blocks (several tiles along every dimension)
    and `split` the weight gradient's number of row slices."""
    spec = dict(lead=lead, I=I, O=O, act=act, bias=bias, res=res, dtype=dtype, tiles=tiles, split=split)
    rows = "x".join(map(str, lead))
    tag = (f"dense-B{rows}-I{I}-O{O}-{act}{'' if bias else '-nobias'}{'-res' if res else ''}"
           f"{'-tiles16' if tiles else ''}{f'-split{split}' if split else ''}-{DTYPE_NAMES[dtype]}")
    return pytest.param(spec, id=tag)


# Every activation: with bias and residual; with neither at B=1; a 3-D input with a bias only.
FP32_CASES = ([case((3,), 7, 5, act, res=True) for act in ACTS]
              + [case((1,), 5, 3, act, bias=False) for act in ACTS]
              + [case((2, 3), 9, 6, act) for act in ACTS])
HALF_CASES = [case((3,), 7, 5, act, res=True, dtype=dtype) for dtype in (FP16, BF16) for act in ACTS]
# Several tiles along M (4), I (3, the last partial) and O (3, the last partial), with the weight
# gradient's reduction over M in 3 slices; and the rule's own tiles at two O blocks and I chunks.
MULTI_TILE = [
    case((2, 25), 37, 35, "tanh", res=True, tiles=True, split=3),
    case((50,), 37, 35, "leakyneg", tiles=True, split=3),
    case((50,), 33, 18, "relu", bias=False, res=True, tiles=True, split=2, dtype=BF16),
    case((70,), 40, 70, "sigmoid", res=True),
]


def _check(spec, device="cpu"):
    act, slope = ACTS[spec["act"]]
    forced = forced_tiles(dense=(16, 16, 16), dense_split=spec["split"]) if spec["tiles"] else forced_tiles()
    before = dict(LAUNCH_COUNTS)
    with forced:
        errors = compare_dense(spec["lead"], spec["I"], spec["O"], act, slope, spec["bias"], spec["res"],
                               spec["dtype"], device, seed=spec["I"] * 100 + spec["O"])
    for name in KERNELS:  # the Triton path ran: one launch each
        assert LAUNCH_COUNTS[name] == before.get(name, 0) + 1, name
    expected = {"out", "dx", "dweight"} | ({"dbias"} if spec["bias"] else set()) | ({"dresidual"} if spec["res"] else set())
    assert set(errors) == expected
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCES[spec["dtype"]]}
    assert not bad, f"relative errors above {TOLERANCES[spec['dtype']]}: {bad}"


@pytest.mark.parametrize("spec", FP32_CASES)
def test_dense_fp32(spec, device):
    _check(spec, device)


@pytest.mark.parametrize("spec", HALF_CASES)
def test_dense_half_precision(spec, device):
    """fp16/bf16 data, float32 accumulation and epilogue (the interpreter upcasts the dots)."""
    _check(spec, device)


@pytest.mark.parametrize("spec", MULTI_TILE)
def test_dense_multi_tile(spec, device):
    _check(spec, device)


# ------------------------------------------------------------------------ launchers directly

def _rnd(*shape, gen, scale=1.0, dtype=FP32, device="cpu"):
    return ((torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale).to(device, dtype)


def test_dense_sign_bits_and_output_layout(device):
    """The forward's int8 sign bits (leaky_relu with a negative slope) are z > 0, every one
    written (the poison 2 gone); the output is contiguous, in x's dtype, shaped (..., O)."""
    gen = torch.Generator().manual_seed(1)
    x, w, b = _rnd(2, 3, 9, gen=gen, device=device), _rnd(6, 9, gen=gen, device=device), _rnd(6, gen=gen, device=device)
    out, sign = linear_fwd(x, w, b, activation="leaky_relu", negative_slope=-0.5)
    z = reference_linear_act(x.double().cpu(), w.double().cpu(), b.double().cpu())
    assert out.shape == (2, 3, 6) and out.is_contiguous() and out.dtype == FP32
    assert sign.dtype == torch.int8 and sign.shape == out.shape
    assert torch.equal(sign.cpu(), (z > 0).to(torch.int8))
    assert linear_fwd(x, w, b, activation="leaky_relu", negative_slope=0.5)[1] is None


def test_dense_any_strides(device):
    """x, weight, residual and the incoming gradient as non-contiguous views (a transposed
    weight, every other row of x, an expanded residual, a stride-0 gradient) are read through
    their strides; results as the reference's."""
    gen = torch.Generator().manual_seed(2)
    x = _rnd(10, 12, gen=gen, device=device)[::2, 1:8]                      # (5, 7), strided rows
    w = _rnd(7, 6, gen=gen, device=device).t()                              # (6, 7), transposed
    res = _rnd(1, 6, gen=gen, device=device).expand(5, 6)                   # stride 0 over rows
    out, _ = linear_fwd(x, w, None, res, "tanh")
    ref = reference_linear_act(x.double(), w.double(), None, "tanh", residual=res.double())
    assert max_rel_error(out, ref) <= TOL
    dout = _rnd(1, 6, gen=gen, device=device).expand(5, 6)
    dz = dout.double() * (1 - ref * ref)
    dx = linear_bwd_data(dout, out, None, w, "tanh")
    dw, db, dres = linear_bwd_weight(dout, out, None, x, "tanh", 0.01, True, FP32, FP32)
    assert max_rel_error(dx, dz @ w.double()) <= TOL
    assert max_rel_error(dw, dz.t() @ x.double()) <= TOL
    assert max_rel_error(db, dz.sum(0)) <= TOL and max_rel_error(dres, dz) <= TOL


def test_dense_weight_gradient_without_dw(device):
    """Only d bias and d residual wanted: one program along I, no GEMM; the results as with dW."""
    gen = torch.Generator().manual_seed(3)
    x, dout, out = _rnd(5, 7, gen=gen, device=device), _rnd(5, 4, gen=gen, device=device), None
    dw, db, dres = linear_bwd_weight(dout, out, None, x, "none", 0.01, False, BF16, FP16)
    assert dw is None and db.dtype == BF16 and dres.dtype == FP16
    assert max_rel_error(db, dout.double().sum(0)) <= TOLERANCES[BF16]
    assert max_rel_error(dres, dout.double()) <= TOLERANCES[FP16]


def test_dense_empty_rows_launch_nothing(device):
    x, w = torch.randn(0, 5, device=device), torch.randn(4, 5, device=device)
    before = LAUNCH_COUNTS["linear_fwd"]
    out, _ = linear_fwd(x, w, torch.randn(4, device=device), activation="relu")
    assert out.shape == (0, 4) and LAUNCH_COUNTS["linear_fwd"] == before
    # Through the module: torch's own op gives torch's empty output (or the bias broadcast).
    layer = recgen.nn.Linear(5, 4, activation="tanh").to(device)
    with backend("triton"):
        assert layer(torch.randn(0, 5, device=device)).shape == (0, 4)
        assert implementation_of(layer) == "torch"
        zero_in = recgen.nn.Linear(0, 3, activation="sigmoid").to(device)
        got = zero_in(torch.randn(2, 0, device=device))
    torch.testing.assert_close(got, torch.sigmoid(zero_in.bias).expand(2, 3))


def test_dense_tile_rule():
    assert dense_blocks(3, 7, 5) == (16, 16, 16, 4)
    assert dense_blocks(4096, 1024, 4096) == (128, 32, 64, 8)
    assert dense_bwd_data_blocks(4096, 1024, 4096) == (128, 64, 32, 8)
    cfg = dense_bwd_weight_config(4096, 1024, 4096)
    assert (cfg.block_o, cfg.block_i, cfg.block_m, cfg.split) == (64, 64, 64, 1)  # 1024 tiles fill the GPU
    cfg = dense_bwd_weight_config(65536, 64, 64)
    assert cfg.split == 128 and cfg.m_per_split == 512 and cfg.m_per_split % cfg.block_m == 0
    assert [t.args()["num_warps"] for t in dense_tiles(4096, 1024, 4096)][:2] == [8, 4]
    with forced_tiles(dense=(16, 32, 16), dense_split=5):
        assert dense_blocks(4096, 1024, 4096)[:3] == (16, 32, 16)
        cfg = dense_bwd_weight_config(1000, 64, 64)
        assert (cfg.block_o, cfg.block_i, cfg.block_m, cfg.split) == (16, 32, 16, 5)
    with pytest.raises(ValueError, match="power of two"):
        with forced_tiles(dense=(8, 16, 16)):
            pass
    with pytest.raises(ValueError, match="dense_split"):
        with forced_tiles(dense_split=0):
            pass


def test_dense_reference_is_torchs_linear():
    """The reference (torch.matmul, written from the equation) against F.linear in float64."""
    gen = torch.Generator().manual_seed(4)
    x, w, b, r = (_rnd(*s, gen=gen, dtype=torch.float64) for s in ((2, 3, 5), (4, 5), (4,), (2, 3, 4)))
    for act, slope in ACTS.values():
        want = like_torch_act(F.linear(x, w, b) + r, act, slope)
        torch.testing.assert_close(reference_linear_act(x, w, b, act, slope, r), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="unknown activation"):
        reference_linear_act(x, w, activation="gelu")


def like_torch_act(z, act, slope):
    """torch.nn's activation modules, as a model of nn.Linear + activation computes them."""
    modules = {"none": nn.Identity(), "relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(slope), "tanh": nn.Tanh(),
               "sigmoid": nn.Sigmoid()}
    return modules[act](z)


# ------------------------------------------------------------------------ NaN / Inf as torch

# (activation id, poisoned tensor, value id, known cause or None)
NONFINITE_CASES = (
    [(act, site, v, None) for act in ("relu", "tanh", "leakyneg") for site in ("x", "weight", "bias", "residual")
     for v in VALUES]
    + [(act, site, v, None) for act in ("none", "leaky", "sigmoid")
       for site, v in (("x", "nan"), ("weight", "neg-inf"), ("bias", "inf"), ("residual", "nan"))]
)


def _dense_results(fn, tensors, act, slope, device):
    """Output and every gradient of fn(x, weight, bias, residual) for a fixed random upstream gradient."""
    leaves = {k: v.detach().clone().to(device).requires_grad_() for k, v in tensors.items()}
    out = fn(leaves["x"], leaves["weight"], leaves["bias"], act, slope, leaves["residual"])
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out).to(device))
    return {"out": out, **{f"d{k}": v.grad for k, v in leaves.items()}}


def _torch_dense(x, weight, bias, act, slope, residual):
    return like_torch_act(F.linear(x, weight, bias) + residual, act, slope)


@pytest.mark.parametrize("act,site,value", like_torch.cases(NONFINITE_CASES))
def test_dense_nonfinite_matches_torch(act, site, value, device):
    """One element of x, the weight, the bias or the residual set to NaN / +Inf / -Inf: the output
    and every gradient have torch's NaN, +Inf and -Inf positions and close finite values."""
    gen = torch.Generator().manual_seed(5)
    tensors = {"x": torch.randn(2, 3, 5, generator=gen), "weight": torch.randn(4, 5, generator=gen) * 0.5,
               "bias": torch.randn(4, generator=gen), "residual": torch.randn(2, 3, 4, generator=gen)}
    set_element(tensors[site], 3, value)
    act, slope = ACTS[act]
    expected = _dense_results(_torch_dense, tensors, act, slope, "cpu")
    before = dict(LAUNCH_COUNTS)
    with backend("triton"):
        actual = _dense_results(recgen.functional.linear_act, tensors, act, slope, device)
    assert all(LAUNCH_COUNTS[k] > before.get(k, 0) for k in KERNELS), "the Triton path did not run"
    assert_all_match(actual, expected)


# ------------------------------------------------------------------------ bad input

def _raised(call):
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the exception is the result under test
        return error
    raise AssertionError("no exception raised")


I, O = 5, 4
# (id, bias, input builder, exception type); torch.nn.Linear's words must come first.
MODULE_BAD = [
    ("list-input", True, lambda d: [[1.0] * I], TypeError),
    ("0d-input", True, lambda d: torch.tensor(1.0, device=d), RuntimeError),
    ("features-1d", True, lambda d: torch.randn(I + 1, device=d), RuntimeError),
    ("features-2d", True, lambda d: torch.randn(3, I - 1, device=d), RuntimeError),
    ("features-3d-nobias", False, lambda d: torch.randn(2, 3, I + 2, device=d), RuntimeError),
    ("dtype-float64", True, lambda d: torch.randn(3, I, dtype=torch.float64, device=d), RuntimeError),
    ("dtype-float16-nobias", False, lambda d: torch.randn(3, I, dtype=FP16, device=d), RuntimeError),
    ("dtype-int64", True, lambda d: torch.ones(3, I, dtype=torch.int64, device=d), RuntimeError),
]
# Where torch's words come from its device's matmul (CUDA's differ): the type must agree.
DEVICE_WORDED = {"dtype-float64", "dtype-float16-nobias", "dtype-int64"}


@pytest.mark.parametrize("name,bias,build,error", MODULE_BAD, ids=[f"dense-{c[0]}" for c in MODULE_BAD])
def test_dense_module_bad_input_raises_torchs_type_and_words(name, bias, build, error, device):
    torch.manual_seed(0)
    ref = nn.Linear(I, O, bias=bias).to(device)
    ours = recgen.nn.Linear(I, O, bias=bias, activation="tanh").to(device)
    ours.load_state_dict(ref.state_dict())
    expected = _raised(lambda: ref(build(device)))
    assert isinstance(expected, error)
    before = dict(LAUNCH_COUNTS)
    recgen.set_backend("triton")  # recgen's own checks, as on the GPU
    got = _raised(lambda: ours(build(device)))
    assert isinstance(got, type(expected)), (type(got), type(expected), got)
    if name not in DEVICE_WORDED or device == "cpu":
        words = str(expected).splitlines()[0]
        assert str(got).startswith(words), f"torch: {words!r}\nrecgen: {str(got)!r}"
    assert "recgen.nn.Linear" in str(got)
    assert dict(LAUNCH_COUNTS) == before, "a launch before the check"


FUNCTIONAL_BAD = [
    pytest.param(dict(activation="gelu"), ValueError, "unknown activation 'gelu'", id="dense-activation-gelu"),
    pytest.param(dict(bias=(5,)), RuntimeError, r"bias must have shape \(4,\)", id="dense-bias-shape"),
    pytest.param(dict(residual=(3, 5)), RuntimeError, r"residual must have the output's shape \(3, 4\)",
                 id="dense-residual-shape"),
    pytest.param(dict(weight=(4, 6)), RuntimeError, "I=6 features", id="dense-weight-features"),
    pytest.param(dict(weight=(4, 5, 1)), RuntimeError, "weight must be 2-D", id="dense-weight-3d"),
    pytest.param(dict(weight_dtype=FP16), RuntimeError, "weight must have x's dtype", id="dense-weight-dtype"),
    pytest.param(dict(x_dtype=torch.float64), RuntimeError, "x must be one of", id="dense-x-float64"),
    pytest.param(dict(residual="r"), TypeError, "residual must be a tensor or None", id="dense-residual-str"),
]


@pytest.mark.parametrize("changes,error,match", FUNCTIONAL_BAD)
def test_dense_functional_bad_arguments_raise_before_launch(changes, error, match, device):
    """x (3, 5), weight (4, 5), bias (4,); each case breaks one thing. Nothing is launched."""
    changes = dict(changes)
    x = torch.randn(3, 5, device=device, dtype=changes.pop("x_dtype", FP32))
    w = torch.randn(*changes.pop("weight", (4, 5)), device=device, dtype=changes.pop("weight_dtype", x.dtype))
    kwargs = {k: torch.randn(*v, device=device) if isinstance(v, tuple) else v for k, v in changes.items()}
    kwargs.setdefault("bias", torch.randn(4, device=device, dtype=w.dtype))
    before = dict(LAUNCH_COUNTS)
    with backend("triton"), pytest.raises(error, match=match):
        recgen.functional.linear_act(x, w, **kwargs)
    assert dict(LAUNCH_COUNTS) == before


def test_dense_module_construction():
    torch.manual_seed(0)
    theirs = nn.Linear(7, 5)
    torch.manual_seed(0)
    ours = recgen.nn.Linear(7, 5, activation="leaky_relu", negative_slope=0.2)
    assert isinstance(ours, nn.Linear) and list(ours.state_dict()) == list(theirs.state_dict())
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p, q)  # the same init
    assert repr(ours) == "Linear(in_features=7, out_features=5, bias=True, activation='leaky_relu', negative_slope=0.2)"
    assert repr(recgen.nn.Linear(3, 2, bias=False)) == repr(nn.Linear(3, 2, bias=False))
    assert recgen.nn.Linear(3, 2, activation="none").activation is None
    with pytest.raises(ValueError, match="activation must be one of"):
        recgen.nn.Linear(3, 2, activation="gelu")
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert (loaded.activation, loaded.negative_slope) == ("leaky_relu", 0.2)
    assert copy.deepcopy(ours).activation == "leaky_relu"


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_dense_module_backends_agree_with_torch(act, device):
    """The layer under each backend (the kernels, torch's op, the reference) gives nn.Linear +
    the activation module's output and gradients, and says what ran."""
    torch.manual_seed(6)
    theirs = nn.Sequential(nn.Linear(6, 4), like_torch_module(act)).to(device)
    ours = recgen.nn.Linear(6, 4, activation=act).to(device)
    ours.load_state_dict(theirs[0].state_dict())
    x = torch.randn(2, 3, 6, device=device)
    xt = x.clone().requires_grad_()
    want = theirs(xt)
    want.sum().backward()
    ran = "kernels" if device == "cuda" else "interpreter"
    for name, implementation in (("triton", ran), ("torch", "torch"), ("reference", "reference")):
        ours.zero_grad()
        xo = x.clone().requires_grad_()
        with backend(name):
            got = ours(xo)
        assert implementation_of(ours) == implementation
        got.sum().backward()
        assert max_rel_error(got, want) <= TOL and max_rel_error(xo.grad, xt.grad) <= TOL
        for p, q in zip(ours.parameters(), theirs.parameters()):
            assert max_rel_error(p.grad, q.grad) <= TOL


def like_torch_module(act):
    return {"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}[act]


def test_dense_module_under_autocast_as_torch(device):
    """Under torch.autocast the layer runs as torch's linear does: input, weight and bias cast to
    the autocast dtype, the output in it, float32 parameter gradients (CPU: bfloat16)."""
    dtype = BF16
    torch.manual_seed(7)
    theirs = nn.Sequential(nn.Linear(9, 6), nn.Tanh()).to(device)
    ours = recgen.nn.Linear(9, 6, activation="tanh").to(device)
    ours.load_state_dict(theirs[0].state_dict())
    x = torch.randn(4, 9, device=device)
    results = []
    for model in (theirs, ours):
        xi = x.clone().requires_grad_()
        before = dict(LAUNCH_COUNTS)
        with backend("triton"), torch.autocast(device_type=device, dtype=dtype):
            out = model(xi)
        out.float().sum().backward()
        results.append((out, xi.grad, [p.grad for p in model.parameters()], dict(LAUNCH_COUNTS) != before))
    (want, dx_want, grads_want, _), (got, dx_got, grads_got, launched) = results
    assert launched and got.dtype == want.dtype == dtype and dx_got.dtype == FP32
    assert max_rel_error(got, want) <= TOLERANCES[dtype] and max_rel_error(dx_got, dx_want) <= TOLERANCES[dtype]
    for g, w in zip(grads_got, grads_want):
        assert g.dtype == FP32 and max_rel_error(g, w) <= TOLERANCES[dtype]


# ------------------------------------------------------------------------ torch.library

def _opcheck(op, args):
    """torch.library.opcheck, plus: no output shares memory with an input or another output."""
    torch.library.opcheck(op, args)
    outs = op(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    storages = [t.untyped_storage().data_ptr() for t in (*[a for a in args if isinstance(a, torch.Tensor)], *outs)
                if t.numel()]
    assert len(set(storages)) == len(storages), "an output aliases an input or another output"


@pytest.mark.parametrize("lead,bias,res,act,dtype", [
    pytest.param((3,), True, True, "tanh", FP32, id="dense-bias-res-tanh"),
    pytest.param((2, 3), False, False, "leakyneg", FP32, id="dense-3d-leakyneg"),
    pytest.param((4,), False, True, "relu", BF16, id="dense-res-relu-bf16"),
])
def test_dense_opcheck_linear_act(lead, bias, res, act, dtype):
    gen = torch.Generator().manual_seed(8)
    x = _rnd(*lead, 5, gen=gen, dtype=dtype).requires_grad_()
    w = _rnd(4, 5, gen=gen, dtype=dtype).requires_grad_()
    b = _rnd(4, gen=gen, dtype=dtype).requires_grad_() if bias else None
    r = _rnd(*lead, 4, gen=gen).requires_grad_() if res else None
    before = LAUNCH_COUNTS["linear_fwd"]
    _opcheck(torch.ops.recgen.linear_act.default, (x, w, b, r, *ACTS[act]))
    assert LAUNCH_COUNTS["linear_fwd"] > before


@pytest.mark.parametrize("act", ["none", "sigmoid", "leakyneg"])
def test_dense_opcheck_backward_ops(act):
    gen = torch.Generator().manual_seed(9)
    activation, slope = ACTS[act]
    x, w = _rnd(2, 3, 5, gen=gen), _rnd(4, 5, gen=gen)
    out, sign = torch.ops.recgen.linear_act(x, w, None, None, activation, slope)
    dout = _rnd(2, 3, 4, gen=gen)
    saved = (out if activation != "none" and act != "leakyneg" else None, sign if act == "leakyneg" else None)
    _opcheck(torch.ops.recgen.linear_bwd_data.default, (dout, *saved, w, activation, slope))
    for wanted in ((True, FP32, FP32), (True, None, None), (False, None, BF16)):
        _opcheck(torch.ops.recgen.linear_bwd_weight.default, (dout, *saved, x, activation, slope, *wanted))


TRACE_TRITON_OPS = r"""
import torch
from torch._functorch.aot_autograd import aot_function

import recgen
from recgen.ops.common import library

recgen.ops.register_all()
assert library.kind() == "triton_op", library.kind()
r = lambda *shape: torch.randn(*shape)
CASES = [
    ("linear_act", (r(2, 3, 5), r(4, 5), r(4), r(2, 3, 4), "tanh", 0.01)),
    ("linear_act", (r(3, 5), r(4, 5), None, None, "leaky_relu", -0.2)),
    ("linear_bwd_data", (r(3, 4), r(3, 4), None, r(4, 5), "sigmoid", 0.01)),
    ("linear_bwd_weight", (r(3, 4), r(3, 4), None, r(3, 5), "relu", 0.01, True, torch.float32, torch.float32)),
]


class Traced(Exception):
    pass


def capture(graph, inputs):
    raise Traced(graph.code)


for name, args in CASES:
    op = getattr(torch.ops.recgen, name)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]

    def call(*ts, op=op, args=args):
        it = iter(ts)
        return op(*[next(it) if isinstance(a, torch.Tensor) else a for a in args])

    try:
        aot_function(call, fw_compiler=capture)(*tensors)
        raise AssertionError(f"{name}: the graph was never compiled")
    except Traced as traced:
        print(name, str(traced).count("triton_kernel_wrapper_functional("))
"""


def test_dense_triton_op_registration_traces_every_kernel():
    """Without the interpreter (as on a GPU) the dense ops are triton_ops, and AOTAutograd traces
    each launcher with fake tensors into a functional graph holding its one kernel."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", TRACE_TRITON_OPS], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split() for line in done.stdout.splitlines()]
    assert [name for name, _ in lines] == ["linear_act", "linear_act", "linear_bwd_data", "linear_bwd_weight"]
    assert all(int(n) == 1 for _, n in lines), lines


def test_dense_compile_fullgraph_matches_eager(device):
    """torch.compile(fullgraph=True) of a converted MLP (fused Linear + LeakyReLU(negative) and
    Linear + Sigmoid, a plain Linear left alone) gives eager's outputs and gradients, with the
    kernels running in the compiled forward and backward."""
    torch.manual_seed(10)
    model = recgen.convert(nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(-0.1), nn.Linear(8, 5), nn.Sigmoid(),
                                         nn.Linear(5, 3))).to(device)
    assert [type(m) for m in model] == [recgen.nn.Linear, nn.Identity, recgen.nn.Linear, nn.Identity, nn.Linear]
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 6, device=device)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = eager(xe)
    before = dict(LAUNCH_COUNTS)
    got = compiled(xc)
    assert LAUNCH_COUNTS["linear_fwd"] >= before.get("linear_fwd", 0) + 2
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(expected)
    before = dict(LAUNCH_COUNTS)
    got.backward(grad)
    assert all(LAUNCH_COUNTS[k] >= before.get(k, 0) + 2 for k in KERNELS[1:])
    expected.backward(grad)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=name)


# ------------------------------------------------------------------------ double backward

@pytest.mark.parametrize("act", ["tanh", "sigmoid", "leakyneg", "relu"])
def test_dense_double_backward_gradient_penalty(act, device):
    """A gradient penalty through the fused layer (create_graph=True recomputes the forward
    through the reference under autograd) plus a plain loss (the kernels' backward): gradients of
    x, the residual and every parameter against the float64 reference on a copy."""
    activation, slope = ACTS[act]
    torch.manual_seed(11)
    ours = recgen.nn.Linear(5, 4, activation=activation, negative_slope=slope).to(device)
    reference = copy.deepcopy(ours).double()
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    res = torch.randn(2, 3, 4, dtype=torch.float64)

    def penalty_grads(layer, x, res):
        x, res = x.clone().requires_grad_(), res.clone().requires_grad_()
        out = recgen.functional.linear_act(x, layer.weight, layer.bias, activation, slope, residual=res)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
        g, = torch.autograd.grad((out * weights).square().sum(), x, create_graph=True)
        penalty = g.square().sum() + (g * torch.cos(torch.arange(g.numel(), dtype=g.dtype, device=g.device))
                                      .view_as(g)).sum()
        (penalty + layer(x).sum()).backward()
        return {"x": x.grad, "residual": res.grad, **{n: p.grad for n, p in layer.named_parameters()}}

    before = dict(LAUNCH_COUNTS)
    with backend("triton"):
        got = penalty_grads(ours, x.float().to(device), res.float().to(device))
    assert all(LAUNCH_COUNTS[k] > before.get(k, 0) for k in KERNELS), "the kernels did not run"
    with backend("reference"):
        want = penalty_grads(reference, x, res)
    for key in want:
        assert max_rel_error(got[key], want[key]) <= TOL, key


# ------------------------------------------------------------------------ recgen.convert

def test_dense_convert_fuses_linear_activation_pairs(device):
    torch.manual_seed(12)
    theirs = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 784)).to(device)
    ours = copy.deepcopy(theirs)
    params = dict(ours.named_parameters())
    report = []
    assert recgen.convert(ours, report=report) is ours
    assert [type(m) for m in ours] == [recgen.nn.Linear, nn.Identity, recgen.nn.Linear, nn.Identity, nn.Linear]
    assert (ours[0].activation, ours[2].activation) == ("relu", "tanh")
    assert report == [("0", "Linear"), ("1", "ReLU"), ("2", "Linear"), ("3", "Tanh")]
    assert all(p is params[n] for n, p in ours.named_parameters())  # the same Parameter objects
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(3, 784, device=device)
    xt, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    want = theirs(xt)
    before = dict(LAUNCH_COUNTS)
    got = ours(xo)
    assert LAUNCH_COUNTS["linear_fwd"] == before.get("linear_fwd", 0) + 2
    assert implementation_of(ours[0]) == ("kernels" if device == "cuda" else "interpreter")
    assert max_rel_error(got, want) <= TOL
    grad = torch.randn_like(want)
    want.backward(grad)
    got.backward(grad)
    assert max_rel_error(xo.grad, xt.grad) <= TOL
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert max_rel_error(p.grad, q.grad) <= TOL, name
    # linear=True swaps the plain Linear too (activation None); the fused ones stay fused.
    recgen.convert(ours, linear=True)
    assert type(ours[4]) is recgen.nn.Linear and ours[4].activation is None and ours[0].activation == "relu"
    assert ours[4].weight is params["4.weight"]


def test_dense_convert_leaves_other_linears_alone():
    """Only an exact Linear followed by an exact activation inside an nn.Sequential fuses: not a
    Linear whose activation is a functional call, not across a Dropout, not a hooked pair, not a
    user's subclass; a LeakyReLU keeps its slope."""
    class MyLinear(nn.Linear):
        pass

    hooked = nn.Linear(3, 3)
    hooked.register_forward_hook(lambda module, args, out: None)
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1), nn.ReLU(), MyLinear(3, 3), nn.Tanh(), hooked, nn.Sigmoid(),
                          nn.Linear(3, 3), nn.LeakyReLU(0.3))
    single = nn.Linear(3, 3)
    recgen.convert(model)
    assert [type(m) for m in model] == [nn.Linear, nn.Dropout, nn.ReLU, MyLinear, nn.Tanh, nn.Linear, nn.Sigmoid,
                                        recgen.nn.Linear, nn.Identity]
    assert (model[7].activation, model[7].negative_slope) == ("leaky_relu", 0.3)
    assert recgen.convert(single) is single and type(single) is nn.Linear
    swapped = recgen.convert(single, linear=True)
    assert type(swapped) is recgen.nn.Linear and swapped.weight is single.weight and swapped.activation is None


def test_dense_dots_follow_torchs_matmul_flag(monkeypatch, device):
    """Every dense launch takes its dot precision from torch's matmul flag, as nn.Linear (TF32 for
    float32 exactly when torch.backends.cuda.matmul allows it; the interpreter is exact float32)."""
    import recgen.ops.dense.linear as dense_ops

    seen = []
    real = dense_ops.dot_flags
    monkeypatch.setattr(dense_ops, "dot_flags", lambda dtype, op: seen.append(op) or real(dtype, op))
    x = torch.randn(3, 5, device=device, requires_grad=True)
    layer = recgen.nn.Linear(5, 4, activation="sigmoid").to(device)
    with backend("triton"):
        layer(x).sum().backward()
    assert seen == ["matmul"] * 3
