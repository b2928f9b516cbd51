"""The residual-block ops in torch.library (recgen/ops/common/library.py): torch.ops.recgen.fused_conv2d,
conv2d_bwd_data, conv2d_bwd_weight, affine_act and affine_act_bwd pass torch.library.opcheck
(schema, fake tensors, autograd registration, AOT dispatch), and torch.compile(fullgraph=True)
traces fused_conv2d, affine_act and residual blocks without graph breaks, with the Triton
kernels running inside the compiled call and results equal to eager's.

Sizes are tiny: under TRITON_INTERPRET=1 every launch runs as Python on the CPU.
"""

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import recgen
from recgen import functional
from recgen.ops import LAUNCH_COUNTS
from recgen.ops.common import library
from recgen.testing import TOLERANCES, max_rel_error, randomise_norms

recgen.ops.register_all()  # the tests call torch.ops.recgen.* directly

N, CI, CO, H, W, K = 2, 3, 5, 5, 5, 3
TOL = TOLERANCES[torch.float32]


def _tensors(*shapes, grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        t = None if shape is None else torch.randn(shape, generator=gen)
        out.append(t.requires_grad_(grad) if t is not None else None)
    return out


# --------------------------------------------------------------------------------- opcheck

def _opcheck(op, args):
    """torch.library.opcheck, plus: every output is a owned_copy tensor, sharing memory with no input
    and no other output (opcheck only looks at inputs)."""
    torch.library.opcheck(op, args)
    outs = op(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    inputs = [a for a in args if isinstance(a, torch.Tensor)]
    storages = [t.untyped_storage().data_ptr() for t in (*inputs, *outs) if t.numel()]
    assert len(set(storages)) == len(storages), "an output aliases an input or another output"



# id -> (present: in_scale, in_shift, out_scale, out_shift, residual; stride, padding_mode,
#        upsample, in_act, in_slope, out_act, out_slope, stats)
CONV_CASES = {
    "prologue-epilogue-residual": ((1, 1, 1, 1, 1), (1, "zeros", False, "relu", 0.01, "leaky_relu", 0.2, False)),
    "stats-scale-only-upsample": ((1, 0, 0, 1, 0), (1, "zeros", True, "leaky_relu", 0.1, "none", 0.01, True)),
    "shift-only-residual-reflect-stride2": ((0, 1, 0, 0, 1), (2, "reflect", False, "none", 0.01, "relu", 0.01,
                                                            False)),
}


def _out_hw(stride, upsample):
    from recgen.ops.conv.conv2d import conv_out_size
    return conv_out_size(H, K, stride, upsample), conv_out_size(W, K, stride, upsample)


@pytest.mark.parametrize("key", list(CONV_CASES))
def test_opcheck_fused_conv2d(key):
    present, options = CONV_CASES[key]
    OH, OW = _out_hw(options[0], options[2])
    shapes = [(N, CI), (N, CI), (CO,), (CO,), (N, CO, OH, OW)]
    x, w, *optional = _tensors((N, CI, H, W), (CO, CI, K, K),
                               *[s if p else None for s, p in zip(shapes, present)], grad=True, seed=1)
    before = LAUNCH_COUNTS["conv2d_fwd"]
    _opcheck(torch.ops.recgen.fused_conv2d.default, (x, w, *optional, *options))
    assert LAUNCH_COUNTS["conv2d_fwd"] > before


@pytest.mark.parametrize("stats", [False, True], ids=["centred-prologue", "centred-prologue-stats"])
def test_opcheck_fused_conv2d_centred_prologue(stats):
    """The trailing in_centre argument (a normalisation's (x - mean) * scale + beta prologue)."""
    x, w, scale, shift, centre = _tensors((N, CI, H, W), (CO, CI, K, K), (N, CI), (N, CI), (N, CI), grad=True,
                                          seed=3)
    options = (1, "zeros", False, "relu", 0.01, "none", 0.01, stats)
    _opcheck(torch.ops.recgen.fused_conv2d.default, (x, w, scale, shift, None, None, None, *options, centre))


@pytest.mark.parametrize("prologue,geometry", [
    pytest.param(True, (1, "zeros", False), id="prologue-zeros"),
    pytest.param(False, (2, "zeros", True), id="plain-upsample-stride2"),
    pytest.param("centred", (1, "reflect", False), id="centred-prologue-reflect"),
])
@pytest.mark.parametrize("which", ["data", "weight"])
def test_opcheck_conv2d_bwd(which, prologue, geometry):
    OH, OW = _out_hw(geometry[0], geometry[2])
    dacc, x, w, scale, shift = _tensors((N, CO, OH, OW), (N, CI, H, W), (CO, CI, K, K), (N, CI), (N, CI), seed=2)
    dacc = dacc.contiguous(memory_format=torch.channels_last)
    rest = ((scale, shift) if prologue else (None, None)) + geometry + ("leaky_relu", 0.1)
    if prologue == "centred":
        rest += (_tensors((N, CI), seed=4)[0],)
    if which == "data":
        _opcheck(torch.ops.recgen.conv2d_bwd_data.default, (dacc, x, w, *rest))
    else:
        _opcheck(torch.ops.recgen.conv2d_bwd_weight.default, (dacc, x, list(w.shape), *rest))


@pytest.mark.parametrize("terms,act,slope", [
    pytest.param((1, 1, 1), "leaky_relu", 0.2, id="all-leaky"),
    pytest.param((1, 0, 0), "relu", 0.01, id="scale-only-relu"),
    pytest.param((0, 1, 1), "leaky_relu", -0.5, id="shift-residual-z-mask"),
])
def test_opcheck_affine_act(terms, act, slope):
    shape = (N, CO, H, W)
    y, scale, shift, res = _tensors(shape, (N, CO), (N, CO), shape, grad=True, seed=3)
    y = y.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    optional = [t if p else None for t, p in zip((scale, shift, res), terms)]
    _opcheck(torch.ops.recgen.affine_act.default, (y, *optional, act, slope))


@pytest.mark.parametrize("grads", [
    pytest.param((torch.float32, torch.float32, torch.float32, torch.float32), id="all"),
    pytest.param((torch.float32, None, torch.float32, None), id="dy-dshift"),
    pytest.param((None, torch.float32, None, torch.bfloat16), id="dscale-dres-bf16"),
])
def test_opcheck_affine_act_bwd(grads):
    shape = (N, CO, H, W)
    dout, out, y, scale, shift, res = _tensors(shape, shape, shape, (N, CO), (N, CO), shape, seed=4)
    _opcheck(torch.ops.recgen.affine_act_bwd.default,
             (dout, out, y, scale, shift, res, "leaky_relu", -0.2, *grads))


@pytest.mark.parametrize("terms,act,slope", [
    pytest.param((1, 1, 1), "leaky_relu", -0.5, id="all-centre-z-mask"),
    pytest.param((0, 0, 0), "relu", 0.01, id="centre-only-relu"),
])
def test_opcheck_affine_act_centre(terms, act, slope):
    """The centre, appended to the schema with a default."""
    shape = (N, CO, H, W)
    y, scale, shift, res, centre = _tensors(shape, (N, CO), (N, CO), shape, (N, CO), grad=True, seed=5)
    optional = [t if p else None for t, p in zip((scale, shift, res), terms)]
    _opcheck(torch.ops.recgen.affine_act.default, (y, *optional, act, slope, centre))


@pytest.mark.parametrize("grads,dcentre", [
    pytest.param((torch.float32, torch.float32, torch.float32, torch.float32), torch.float32, id="all-dcentre"),
    pytest.param((None, torch.float32, None, None), torch.bfloat16, id="dscale-dcentre-bf16-no-dshift"),
])
def test_opcheck_affine_act_bwd_centre(grads, dcentre):
    shape = (N, CO, H, W)
    dout, out, y, scale, shift, res, centre = _tensors(shape, shape, shape, (N, CO), (N, CO), shape, (N, CO), seed=6)
    _opcheck(torch.ops.recgen.affine_act_bwd.default,
             (dout, out, y, scale, shift, res, "leaky_relu", -0.2, *grads, centre, dcentre))


TRACE_TRITON_OPS = r"""
import torch
from torch._functorch.aot_autograd import aot_function

import recgen
from recgen.ops.common import library

recgen.ops.register_all()
assert library.kind() == "triton_op", library.kind()
N, CI, CO, H, W, K = 2, 3, 5, 5, 5, 3
r = lambda *shape: torch.randn(*shape)
cl = lambda t: t.contiguous(memory_format=torch.channels_last)
f32 = torch.float32
CASES = [
    ("fused_conv2d", (r(N, CI, H, W), r(CO, CI, K, K), r(N, CI), r(N, CI), r(CO), r(CO), r(N, CO, H, W), 1, "zeros",
                      False, "relu", 0.01, "leaky_relu", 0.2, False)),
    ("fused_conv2d", (r(N, CI, H, W), r(CO, CI, K, K), None, r(N, CI), None, r(CO), None, 2, "reflect", True,
                      "relu", 0.01, "none", 0.01, True)),
    ("conv2d_bwd_data", (cl(r(N, CO, H, W)), r(N, CI, H, W), r(CO, CI, K, K), r(N, CI), None, 1, "zeros", False,
                         "relu", 0.01)),
    ("conv2d_bwd_weight", (cl(r(N, CO, H, W)), r(N, CI, H, W), [CO, CI, K, K], None, r(N, CI), 1, "zeros", False,
                           "leaky_relu", 0.1)),
    ("affine_act", (r(N, CO, H, W), r(N, CO), None, r(N, CO, H, W), "leaky_relu", 0.2)),
    ("affine_act_bwd", (r(N, CO, H, W), r(N, CO, H, W), r(N, CO, H, W), r(N, CO), r(N, CO), r(N, CO, H, W),
                        "leaky_relu", -0.2, f32, f32, None, torch.bfloat16)),
    ("affine_act", (r(N, CO, H, W), r(N, CO), r(N, CO), None, "relu", 0.01, r(N, CO))),
    ("affine_act_bwd", (r(N, CO, H, W), r(N, CO, H, W), r(N, CO, H, W), r(N, CO), None, None, "relu", 0.01,
                        f32, f32, None, None, r(N, CO), f32)),
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


def test_triton_op_registration_traces_every_kernel():
    """Without the interpreter (as on a GPU) the ops are triton_ops (registered from the
    launchers' annotations), and AOTAutograd traces each launcher with fake tensors into a
    functional graph holding its kernel. Run in a subprocess without TRITON_INTERPRET; the graphs
    are never run (there is no GPU here)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", TRACE_TRITON_OPS], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split() for line in done.stdout.splitlines()]
    assert [name for name, _ in lines] == ["fused_conv2d", "fused_conv2d", "conv2d_bwd_data", "conv2d_bwd_weight",
                                           "affine_act", "affine_act_bwd", "affine_act", "affine_act_bwd"]
    assert all(int(n) == 1 for _, n in lines), lines


# --------------------------------------------------------------------------------- torch.compile

def _compare_compiled(fn, args, backend="aot_eager", launches=("conv2d_fwd",), bwd_launches=()):
    """fn compiled (fullgraph) vs eager on the same leaves: outputs and every gradient. The
    kernels named in `launches` must run in the compiled forward, `bwd_launches` in its backward."""
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    eager_leaves = [a.detach().clone().requires_grad_() for a in args]
    comp_leaves = [a.detach().clone().requires_grad_() for a in args]
    expected = fn(*eager_leaves)
    before = dict(LAUNCH_COUNTS)
    got = compiled(*comp_leaves)
    for name in launches:
        assert LAUNCH_COUNTS[name] > before.get(name, 0), f"{name} did not run in the compiled call"
    expected, got = (expected, got) if isinstance(got, tuple) else ((expected,), (got,))
    weights = _tensors(*[o.shape for o in expected], seed=9)
    before = dict(LAUNCH_COUNTS)
    torch.autograd.backward(got, weights)
    for name in bwd_launches:
        assert LAUNCH_COUNTS[name] > before.get(name, 0), f"{name} did not run in the compiled backward"
    torch.autograd.backward(expected, weights)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape and a.stride() == b.stride(), f"output {k}"
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for k, (a, b) in enumerate(zip(comp_leaves, eager_leaves)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5, msg=f"gradient of input {k}")


def _conv_args(seed=5):
    return _tensors((N, CI, H, W), (CO, CI, K, K), (N, CI), (N, CI), (CO,), (CO,), (N, CO, H, W), seed=seed)


def _fused(x, w, in_scale, in_shift, out_scale, out_shift, residual):
    return functional.fused_conv2d(x, w, in_scale=in_scale, in_shift=in_shift, in_act="leaky_relu", in_slope=0.1,
                                   out_scale=out_scale, out_shift=out_shift, residual=residual,
                                   out_act="relu")


def test_compile_fused_conv2d():
    _compare_compiled(_fused, _conv_args(), launches=("conv2d_fwd",),
                      bwd_launches=("affine_act_bwd", "conv2d_bwd_data", "conv2d_bwd_weight", "conv2d_fwd"))


def test_compile_fused_conv2d_stats():
    def fn(x, w, in_scale, out_scale):
        out, s, ss = functional.fused_conv2d(x, w, stride=2, padding_mode="reflect", in_scale=in_scale,
                                             in_act="relu", out_scale=out_scale, stats=True)
        return out * 2, s, ss

    x, w, in_scale, _, out_scale = _conv_args(seed=6)[:5]
    _compare_compiled(fn, [x, w, in_scale, out_scale], bwd_launches=("conv2d_bwd_data", "conv2d_bwd_weight"))


def test_compile_affine_act():
    def fn(y, scale, shift, residual):
        return functional.affine_act(y, scale, shift, residual, act="leaky_relu", slope=0.2) * 3

    args = _tensors((N, CO, H, W), (N, CO), (CO,), (N, CO, H, W), seed=7)
    args[0] = args[0].contiguous(memory_format=torch.channels_last)
    _compare_compiled(fn, args, launches=("affine_act_fwd",), bwd_launches=("affine_act_bwd",))


def test_compile_affine_act_centre():
    def fn(y, scale, shift, centre):
        return functional.affine_act(y, scale, shift, act="leaky_relu", slope=-0.3, centre=centre) * 3

    args = _tensors((N, CO, H, W), (N, CO), (CO,), (1, CO), seed=8)
    args[0] = args[0].contiguous(memory_format=torch.channels_last)
    _compare_compiled(fn, args, launches=("affine_act_fwd",), bwd_launches=("affine_act_bwd",))


class ResnetBlock(nn.Module):
    """Written like the CycleGAN ResnetBlock (its 'zero' padding variant, with BatchNorm), which
    recgen.convert turns into FusedResnetBlock. Reflect padding is covered by the opchecks: its
    data-gradient kernel is the slowest under the interpreter."""

    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim),
                                        nn.ReLU(True), nn.Conv2d(dim, dim, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(dim))

    def forward(self, x):
        return x + self.conv_block(x)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_compile_residual_blocks(train):
    torch.manual_seed(8)
    model = nn.Sequential(recgen.nn.ResidualBlock(CI, CO, stride=2, norm="instance"), ResnetBlock(CO))
    recgen.convert(model)
    assert isinstance(model[1], recgen.nn.FusedResnetBlock)
    randomise_norms(model)
    model.train(train)
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(N, CI, 6, 7)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = eager(xe)
    before = dict(LAUNCH_COUNTS)
    got = compiled(xc)
    assert LAUNCH_COUNTS["conv2d_fwd"] >= before.get("conv2d_fwd", 0) + 5  # 3 + 2 convolutions
    assert max_rel_error(got, expected) <= TOL
    grad = torch.randn_like(expected)
    before = dict(LAUNCH_COUNTS)
    got.backward(grad)
    assert LAUNCH_COUNTS["conv2d_bwd_weight"] >= before.get("conv2d_bwd_weight", 0) + 5
    expected.backward(grad)
    assert max_rel_error(xc.grad, xe.grad) <= TOL
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        assert max_rel_error(p.grad, q.grad) <= TOL, name
    for (name, b), c in zip(model.named_buffers(), eager.buffers()):  # BatchNorm running statistics
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=name)


def test_compile_inductor_fused_conv2d():
    """Inductor compiles the graph around the op (CPU C++ code) and calls the op itself; under the
    interpreter the op is a custom_op, opaque to Inductor."""
    assert library.kind() == "custom_op" or torch.cuda.is_available()

    def fn(x, w, in_scale, in_shift, out_scale, out_shift, residual):
        return _fused(x.sin(), w, in_scale, in_shift, out_scale, out_shift, residual).cos()

    _compare_compiled(fn, _conv_args(seed=10), backend="inductor",
                      bwd_launches=("conv2d_bwd_data", "conv2d_bwd_weight"))
