"""Fused affine + activation (out = act((y - centre) * scale + shift + residual)) against the
float64 reference recgen.reference.conv.affine_act with autograd: the output and every gradient
(y, centre, scale, shift, residual), each activation, with and without each optional term, odd
sizes, several pixel tiles and channel blocks, half precision, any layout; a normalisation with
|mean| / std = 1e4 keeps float32 accuracy with the centre where the folded shift does not; bad
input raises before any launch. Outputs and partial-sum buffers are NaN-poisoned (conftest), so
an unwritten element fails."""

import itertools
import zlib

import pytest
import torch

from recgen.ops import LAUNCH_COUNTS
from recgen.ops.common.tiling import affine_blocks, forced_tiles
from recgen.ops.conv.affine import checked_affine_act as affine_act
from recgen.reference.conv import affine_act as reference_affine_act
from recgen.testing import DTYPE_NAMES, TOLERANCES, max_rel_error

ACTS = [("none", 0.01), ("relu", 0.01), ("leaky_relu", 0.2), ("leaky_relu", -0.3)]
# (N, C, H, W): N=1, C = 3 / 5 / 12, a 7 x 10 image, a 1 x 1 image.
SHAPES = [(1, 3, 7, 10), (2, 5, 7, 10), (2, 12, 3, 5), (3, 12, 1, 1)]
TERMS = list(itertools.product((False, True), repeat=3))  # (scale, shift, residual)
SMALL_TILES = (16, 4)  # BLOCK_P, BLOCK_C: 7 x 10 pixels -> 5 tiles, C=5 -> 2 channel blocks


def act_id(act, slope):
    return act if act != "leaky_relu" else f"leaky{slope:+g}"


def case_id(shape, act, slope, terms, dtype, extra=""):
    N, C, H, W = shape
    parts = "".join(name for name, on in zip("str", terms) if on) or "plain"
    return f"affine-N{N}-C{C}-{H}x{W}-{act_id(act, slope)}-{parts}-{DTYPE_NAMES[dtype]}{extra}"


def make_inputs(shape, terms, dtype, device, seed, vector=(None,) * 2, centre=False):
    """y and residual channels-last; scale/shift (N, C), or the shape given in `vector`; with
    `centre`, a centre (N, C) (or the shape in vector[2]) drawn where y is, so y - centre changes
    sign within each channel."""
    N, C, H, W = shape
    gen = torch.Generator().manual_seed(seed)

    def rnd(*size, lo=-1.0, hi=1.0):
        t = torch.rand(*size, generator=gen, dtype=torch.float64) * (hi - lo) + lo
        return t.to(dtype=dtype, device=device)

    cl = dict(memory_format=torch.channels_last)
    inputs = {
        "y": rnd(N, C, H, W, lo=-2, hi=2).contiguous(**cl),
        "scale": rnd(*(vector[0] or (N, C)), lo=0.5, hi=1.5) if terms[0] else None,
        "shift": rnd(*(vector[1] or (N, C))) if terms[1] else None,
        "residual": rnd(N, C, H, W).contiguous(**cl) if terms[2] else None,
    }
    if centre:
        centre_shape = vector[2] if len(vector) > 2 else None
        inputs["centre"] = rnd(*(centre_shape or (N, C)), lo=-1.5, hi=1.5)
    return inputs


def for_reference(tensors):
    """The reference broadcasts (1, C) vectors but indexes (C,) ones as 2-D: view those as (1, C)."""
    return {n: v.view(1, -1) if v is not None and v.dim() == 1 else v for n, v in tensors.items()}


def compare(inputs, act, slope, grad_layout=None, requires=None, seed=0):
    """Run the Triton op and the float64 reference with autograd; return {name: max rel error}
    for out and the gradient of every input that requires grad. Asserts one launch each way."""
    names = [n for n, v in inputs.items() if v is not None and (requires is None or n in requires)]
    tri = {n: (v.detach().clone().requires_grad_(n in names) if v is not None else None) for n, v in inputs.items()}
    ref = {n: (v.detach().to(torch.float64).requires_grad_(n in names) if v is not None else None)
           for n, v in inputs.items()}
    before = LAUNCH_COUNTS["affine_act_fwd"], LAUNCH_COUNTS["affine_act_bwd"]
    out = affine_act(**tri, act=act, slope=slope)
    expected = reference_affine_act(**for_reference(ref), act=act, slope=slope)
    # y's dtype, whatever the dtype of the per-channel vectors.
    assert out.dtype == inputs["y"].dtype
    assert out.stride() == torch.empty_like(inputs["y"], dtype=out.dtype).stride()  # laid out like y
    gen = torch.Generator().manual_seed(seed)
    g = (torch.rand(expected.shape, generator=gen, dtype=torch.float64) * 2 - 1).to(out.dtype)
    if grad_layout is not None:
        g = grad_layout(g)
    errors = {"out": max_rel_error(out, expected)}
    if names:
        out.backward(g.to(out.device))
        expected.backward(g.to(torch.float64))
        for n in names:
            assert tri[n].grad is not None and tri[n].grad.dtype == tri[n].dtype, n
            errors[f"d{n}"] = max_rel_error(tri[n].grad, ref[n].grad)
    # The Triton path ran, once forward and (when anything needs a gradient) once backward.
    assert (LAUNCH_COUNTS["affine_act_fwd"], LAUNCH_COUNTS["affine_act_bwd"]) == \
        (before[0] + 1, before[1] + (1 if names else 0))
    return errors


def check(shape, act, slope, terms, dtype, device, blocks=None, vector=(None, None), centre=False, **kw):
    seed = zlib.crc32(repr((shape, act, slope, terms) + (("centre",) if centre else ())).encode())
    inputs = make_inputs(shape, terms, dtype, device, seed, vector, centre)
    if blocks is None:
        errors = compare(inputs, act, slope, seed=seed, **kw)
    else:
        with forced_tiles(affine=blocks):
            errors = compare(inputs, act, slope, seed=seed, **kw)
    tol = TOLERANCES[dtype]
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"
    return errors


def grid(shapes, acts, terms, dtypes, extra=""):
    return [pytest.param(shape, act, slope, t, dtype, id=case_id(shape, act, slope, t, dtype, extra))
            for shape in shapes for act, slope in acts for t in terms for dtype in dtypes]


ALL, NONE = (True, True, True), (False, False, False)


@pytest.mark.parametrize("shape,act,slope,terms,dtype", grid(SHAPES, ACTS, [ALL, NONE], [torch.float32]))
def test_matches_reference(shape, act, slope, terms, dtype, device):
    errors = check(shape, act, slope, terms, dtype, device)
    assert set(errors) == {"out", "dy"} | ({"dscale", "dshift", "dresidual"} if terms == ALL else set())


@pytest.mark.parametrize("shape,act,slope,terms,dtype",
                         grid([(2, 5, 7, 10)], ACTS, TERMS, [torch.float32], "-tiles16x4"))
def test_each_optional_term_several_tiles(shape, act, slope, terms, dtype, device):
    """Every subset of (scale, shift, residual), 5 pixel tiles x 2 channel blocks per image."""
    check(shape, act, slope, terms, dtype, device, blocks=SMALL_TILES)


@pytest.mark.parametrize("shape,act,slope,terms,dtype",
                         grid([(1, 12, 7, 10)], ACTS, [ALL], [torch.bfloat16, torch.float16], "-tiles16x4"))
def test_half_precision(shape, act, slope, terms, dtype, device):
    check(shape, act, slope, terms, dtype, device, blocks=SMALL_TILES)


def test_mixed_dtypes_keep_activation_dtype(device):
    """bf16 activations with float32 scale/shift (as computed from float32 statistics): the
    output stays bf16; each gradient keeps its input's dtype."""
    inputs = make_inputs((2, 5, 7, 10), ALL, torch.bfloat16, device, seed=3)
    inputs["scale"], inputs["shift"] = inputs["scale"].float(), inputs["shift"].float()
    errors = compare(inputs, "relu", 0.01)
    assert max(errors.values()) <= TOLERANCES[torch.bfloat16], errors


def test_channels_beyond_one_block_default_rule(device):
    """C = 130 needs two channel blocks under the default block rule."""
    assert affine_blocks(130, 15)[1] < 130
    check((1, 130, 3, 5), "leaky_relu", 0.1, ALL, torch.float32, device)


@pytest.mark.parametrize("vector", [(None, (5,)), ((1, 5), None), ((5,), (1, 5))],
                         ids=["shift-C", "scale-1C", "scale-C-shift-1C"])
def test_per_channel_vectors(vector, device):
    """(C,) and (1, C) scale/shift are shared by every image; their gradients sum over N."""
    check((3, 5, 4, 6), "relu", 0.01, ALL, torch.float32, device, blocks=SMALL_TILES, vector=vector)


LAYOUTS = {
    "y-nchw": lambda t: {**t, "y": t["y"].contiguous()},
    "residual-nchw": lambda t: {**t, "residual": t["residual"].contiguous()},
    "y-strided-slice": lambda t: {**t, "y": torch.cat([t["y"], t["y"]], dim=3)[..., ::2]},
    "y-permuted-hw": lambda t: {**t, "y": t["y"].transpose(2, 3).contiguous().transpose(2, 3)},
    "scale-transposed": lambda t: {**t, "scale": t["scale"].t().contiguous().t()},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("act,slope", [("relu", 0.01), ("leaky_relu", -0.3)], ids=["relu", "leaky-0.3"])
def test_any_layout(layout, act, slope, device):
    inputs = LAYOUTS[layout](make_inputs((2, 5, 7, 10), ALL, torch.float32, device, seed=5))
    with forced_tiles(affine=SMALL_TILES):
        errors = compare(inputs, act, slope)
    assert max(errors.values()) <= TOLERANCES[torch.float32], errors


GRAD_LAYOUTS = {
    "nchw": lambda g: g.contiguous(),
    "hw-swapped": lambda g: g.transpose(2, 3).contiguous().transpose(2, 3),
    "strided": lambda g: torch.cat([g, g], dim=1)[:, ::2],
    "expanded": lambda g: g[:, :, :1, :1].expand_as(g),  # as from out.sum(): stride 0 over pixels
}


@pytest.mark.parametrize("layout", list(GRAD_LAYOUTS))
def test_any_gradient_layout(layout, device):
    grad_layout = GRAD_LAYOUTS[layout]
    inputs = make_inputs((2, 5, 7, 10), ALL, torch.float32, device, seed=6)
    with forced_tiles(affine=SMALL_TILES):
        errors = compare(inputs, "leaky_relu", 0.2, grad_layout=grad_layout)
    assert max(errors.values()) <= TOLERANCES[torch.float32], errors


@pytest.mark.parametrize("requires", [("y",), ("scale",), ("shift",), ("residual",), ("scale", "residual")])
@pytest.mark.parametrize("act,slope", [("relu", 0.01), ("leaky_relu", -0.3)], ids=["relu", "leaky-0.3"])
def test_some_inputs_require_grad(requires, act, slope, device):
    """Only the wanted gradients are computed (constexpr flags), and they are right."""
    inputs = make_inputs((2, 5, 7, 10), ALL, torch.float32, device, seed=7)
    with forced_tiles(affine=SMALL_TILES):
        errors = compare(inputs, act, slope, requires=requires)
    assert set(errors) == {"out"} | {f"d{n}" for n in requires}
    assert max(errors.values()) <= TOLERANCES[torch.float32], errors


@pytest.mark.parametrize("act,slope", [("relu", 0.01), ("leaky_relu", 0.01), ("leaky_relu", 0.0),
                                       ("leaky_relu", -0.5)], ids=["relu", "leaky0.01", "leaky0", "leaky-0.5"])
def test_gradient_at_zero_follows_torch(act, slope, device):
    """Where z == 0 exactly, torch's relu passes no gradient and leaky_relu passes `slope`.
    Dyadic inputs make every product and sum exact (in float32, float64, and fused on the GPU),
    so the kernel and the reference see the same zeros."""
    gen = torch.Generator().manual_seed(8)
    N, C, H, W = 1, 4, 3, 5
    y = torch.randint(-16, 17, (N, C, H, W), generator=gen) / 8
    scale = 2.0 ** torch.randint(-1, 2, (N, C), generator=gen)
    shift = torch.randint(-8, 9, (N, C), generator=gen) / 4
    z = y * scale[:, :, None, None] + shift[:, :, None, None]
    other = torch.randint(-8, 9, y.shape, generator=gen) / 8
    residual = torch.where(torch.rand(y.shape, generator=gen) < 0.5, -z, other)
    inputs = {"y": y, "scale": scale, "shift": shift, "residual": residual}
    inputs = {n: v.to(device) for n, v in inputs.items()}
    assert (z + residual == 0).sum() >= N * C * H * W // 4
    errors = compare(inputs, act, slope)
    assert max(errors.values()) <= TOLERANCES[torch.float32], errors


def test_backward_is_deterministic(device):
    inputs = make_inputs((2, 5, 7, 10), ALL, torch.float32, device, seed=10)
    grads = []
    for _ in range(2):
        leaves = {n: v.clone().requires_grad_() for n, v in inputs.items()}
        with forced_tiles(affine=SMALL_TILES):
            affine_act(**leaves, act="relu").square().sum().backward()
        grads.append([leaves[n].grad for n in ("y", "scale", "shift", "residual")])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 5), (2, 0, 3, 3)], ids=["N0", "H0", "C0"])
def test_empty_input_launches_nothing(shape, device):
    leaves = {n: v.requires_grad_() if v is not None else None
              for n, v in make_inputs(shape, ALL, torch.float32, device, seed=11).items()}
    before = dict(LAUNCH_COUNTS)
    out = affine_act(**leaves, act="relu")
    out.sum().backward()
    assert out.shape == shape
    assert leaves["scale"].grad.shape == shape[:2] and not leaves["scale"].grad.any()
    assert dict(LAUNCH_COUNTS) == before


# ---- the centre: out = act((y - centre) * scale + shift + residual) -----------------------------

CENTRED_ACTS = [("relu", 0.01), ("leaky_relu", -0.3)]  # the out mask, and the z mask (recomputed with the centre)


@pytest.mark.parametrize("shape,act,slope,terms,dtype", grid(SHAPES, ACTS, [ALL, NONE], [torch.float32], "-centre"))
def test_centred_matches_reference(shape, act, slope, terms, dtype, device):
    errors = check(shape, act, slope, terms, dtype, device, centre=True)
    assert set(errors) == {"out", "dy", "dcentre"} | ({"dscale", "dshift", "dresidual"} if terms == ALL else set())


@pytest.mark.parametrize("shape,act,slope,terms,dtype",
                         grid([(2, 5, 7, 10)], CENTRED_ACTS, TERMS, [torch.float32], "-centre-tiles16x4"))
def test_centred_each_optional_term_several_tiles(shape, act, slope, terms, dtype, device):
    """Every subset of (scale, shift, residual) with a centre, 5 pixel tiles x 2 channel blocks:
    dcentre comes from the sums of dz also where there is no shift (or no scale: -sum dz)."""
    errors = check(shape, act, slope, terms, dtype, device, blocks=SMALL_TILES, centre=True)
    assert "dcentre" in errors


@pytest.mark.parametrize("shape,act,slope,terms,dtype",
                         grid([(1, 12, 7, 10)], ACTS, [ALL], [torch.bfloat16, torch.float16], "-centre-tiles16x4"))
def test_centred_half_precision(shape, act, slope, terms, dtype, device):
    check(shape, act, slope, terms, dtype, device, blocks=SMALL_TILES, centre=True)


def test_centred_mixed_dtypes_keep_activation_dtype(device):
    """bf16 activations with float32 centre/scale/shift (float32 statistics): the output stays
    bf16, each gradient keeps its input's dtype (dcentre float32)."""
    inputs = make_inputs((2, 5, 7, 10), ALL, torch.bfloat16, device, seed=3, centre=True)
    for name in ("centre", "scale", "shift"):
        inputs[name] = inputs[name].float()
    errors = compare(inputs, "leaky_relu", -0.3)
    assert max(errors.values()) <= TOLERANCES[torch.bfloat16], errors


@pytest.mark.parametrize("vector", [(None, None, (5,)), ((5,), None, (1, 5))], ids=["centre-C", "scale-C-centre-1C"])
def test_centred_per_channel_vectors(vector, device):
    """A (C,) or (1, C) centre is shared by every image; its gradient sums over N."""
    check((3, 5, 4, 6), "relu", 0.01, ALL, torch.float32, device, blocks=SMALL_TILES, vector=vector, centre=True)


@pytest.mark.parametrize("requires", [("centre",), ("scale",), ("shift",), ("y", "centre"), ("centre", "residual")])
@pytest.mark.parametrize("act,slope", CENTRED_ACTS, ids=["relu", "leaky-0.3"])
def test_centred_some_inputs_require_grad(requires, act, slope, device):
    """dcentre alone still has the kernel write the sums of dz (shift needs no gradient); dscale
    alone reads the centre; only the wanted gradients come back."""
    inputs = make_inputs((2, 5, 7, 10), ALL, torch.float32, device, seed=7, centre=True)
    with forced_tiles(affine=SMALL_TILES):
        errors = compare(inputs, act, slope, requires=requires)
    assert set(errors) == {"out"} | {f"d{n}" for n in requires}
    assert max(errors.values()) <= TOLERANCES[torch.float32], errors


def test_centred_any_layout(device):
    """A transposed (N, C) centre (stride_n == 1) and channels-first y."""
    inputs = make_inputs((2, 5, 7, 10), ALL, torch.float32, device, seed=5, centre=True)
    inputs = {**inputs, "y": inputs["y"].contiguous(), "centre": inputs["centre"].t().contiguous().t()}
    with forced_tiles(affine=SMALL_TILES):
        errors = compare(inputs, "leaky_relu", -0.3, grad_layout=GRAD_LAYOUTS["hw-swapped"])
    assert max(errors.values()) <= TOLERANCES[torch.float32], errors


def test_centred_double_backward(device):
    """create_graph=True: the gradients (recomputed through the reference) are differentiable in
    the centre too, and match float64 autograd's second derivatives."""
    inputs = make_inputs((2, 5, 4, 6), ALL, torch.float32, device, seed=12, centre=True)
    results = []
    for dtype, fn in ((torch.float32, affine_act), (torch.float64, reference_affine_act)):
        leaves = {n: v.detach().to(dtype).requires_grad_() for n, v in inputs.items()}
        before = LAUNCH_COUNTS["affine_act_fwd"]
        out = fn(**leaves, act="leaky_relu", slope=0.2)
        assert LAUNCH_COUNTS["affine_act_fwd"] == before + (fn is affine_act)
        names = ("y", "centre", "scale")
        grads = torch.autograd.grad(out.square().sum(), [leaves[n] for n in names], create_graph=True)
        sum(g.square().sum() for g in grads).backward()
        results.append({**{f"d{n}": g for n, g in zip(names, grads)},
                        **{f"dd{n}": leaves[n].grad for n in inputs}})
    errors = {k: max_rel_error(results[0][k], results[1][k]) for k in results[1]}
    assert max(errors.values()) <= TOLERANCES[torch.float32], errors


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 5)], ids=["N0", "H0"])
def test_centred_empty_input_launches_nothing(shape, device):
    leaves = {n: v.requires_grad_() if v is not None else None
              for n, v in make_inputs(shape, ALL, torch.float32, device, seed=11, centre=True).items()}
    before = dict(LAUNCH_COUNTS)
    out = affine_act(**leaves, act="relu")
    out.sum().backward()
    assert out.shape == shape
    assert leaves["centre"].grad.shape == shape[:2] and not leaves["centre"].grad.any()
    assert dict(LAUNCH_COUNTS) == before


def _normalisation_errors(y, centre, scale, beta, dout, centred):
    """max |error| of out, dy, dscale against float64 for out = (y - centre) * scale + beta,
    applied centred or folded (shift = beta - centre * scale, as float32 autograd would build
    it), and the float64 magnitudes that bound a float32 rounding of each."""
    exact = {n: t.double().requires_grad_() for n, t in (("y", y), ("scale", scale))}
    out64 = (exact["y"] - centre.double()[:, :, None, None]) * exact["scale"][:, :, None, None] + \
        beta.double()[:, :, None, None]
    out64.backward(dout.double())
    leaves = {n: t.clone().requires_grad_() for n, t in (("y", y), ("scale", scale))}
    before = LAUNCH_COUNTS["affine_act_fwd"], LAUNCH_COUNTS["affine_act_bwd"]
    if centred:
        out = affine_act(leaves["y"], leaves["scale"], beta, centre=centre)
    else:
        out = affine_act(leaves["y"], leaves["scale"], beta - centre * leaves["scale"])
    out.backward(dout)
    assert (LAUNCH_COUNTS["affine_act_fwd"], LAUNCH_COUNTS["affine_act_bwd"]) == (before[0] + 1, before[1] + 1)
    errors = {"out": (out.double() - out64).abs().max().item(),
              "dy": (leaves["y"].grad.double() - exact["y"].grad).abs().max().item(),
              "dscale": (leaves["scale"].grad.double() - exact["scale"].grad).abs().max().item()}
    # What float32 rounding of the result itself costs: |out| per element, and for dscale, a
    # sum over the pixels, sum |dz * (y - centre)| per (n, c).
    terms = (dout.double() * (y.double() - centre.double()[:, :, None, None])).abs().sum(dim=(2, 3))
    magnitudes = {"out": out64.abs().max().item(), "dy": exact["y"].grad.abs().max().item(),
                  "dscale": terms.max().item()}
    return errors, magnitudes


def test_centre_keeps_float32_accuracy_where_mean_dwarfs_std(device):
    """|mean| / std = 1e4: y = 1000.123 + 0.1 * randn, centre = the float64 mean rounded to
    float32, scale = 1 / std. Centred, out, dy and dscale are within a few float32 roundings
    of their own magnitude, as a float64 computation on the same inputs gives them; folded into
    the shift (beta - mean * scale, ~1e4), the large terms cancel and the errors are ~1e4 times
    that (so this test fails on the folded form)."""
    gen = torch.Generator().manual_seed(13)
    N, C, H, W = 2, 3, 9, 13
    y = (1000.123 + 1e-1 * torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)).float()
    y = y.to(device).contiguous(memory_format=torch.channels_last)
    mean = y.double().mean(dim=(2, 3))
    std = y.double().var(dim=(2, 3), correction=0).sqrt()
    assert (mean.abs() / std).min() > 5e3
    centre, scale = mean.float(), (1 / std).float()
    beta = torch.randn(N, C, generator=gen).to(device)
    dout = torch.randn(N, C, H, W, generator=gen).to(device)
    errors, magnitudes = _normalisation_errors(y, centre, scale, beta, dout, centred=True)
    eps = torch.finfo(torch.float32).eps
    bound = {k: 8 * eps * v for k, v in magnitudes.items()}
    assert all(errors[k] <= bound[k] for k in errors), (errors, bound)
    assert errors["out"] < 5e-6 and errors["dscale"] < 5e-5, errors  # in absolute terms too
    folded, _ = _normalisation_errors(y, centre, scale, beta, dout, centred=False)
    assert folded["out"] > 100 * bound["out"] and folded["dscale"] > 100 * bound["dscale"], (folded, bound)


def _bad(device):
    y = torch.randn(2, 3, 4, 5, device=device)
    nc = torch.randn(2, 3, device=device)
    return [
        ("y-3d", dict(y=y[0]), RuntimeError, r"y must be a 4-D \(N, C, H, W\) tensor, got 3-D"),
        ("y-int", dict(y=y.long()), RuntimeError, r"y dtype .* got torch.int64"),
        ("y-float64", dict(y=y.double()), RuntimeError, r"y dtype .* got torch.float64"),
        ("y-not-tensor", dict(y=[1.0]), RuntimeError, r"y must be a 4-D .* got list"),
        ("scale-shape", dict(y=y, scale=torch.randn(3, 2, device=device)), RuntimeError,
         r"scale must have shape \(N, C\) = \(2, 3\), \(1, C\) or \(C,\) with C = 3, got \(3, 2\)"),
        ("shift-4d", dict(y=y, shift=nc[:, :, None, None]), RuntimeError,
         r"shift must have shape .* got \(2, 3, 1, 1\)"),
        ("shift-dtype", dict(y=y, shift=nc.double()), RuntimeError, r"shift dtype .* got torch.float64"),
        ("scale-device", dict(y=y, scale=torch.randn(2, 3, device="meta")), RuntimeError,
         r"scale must be on .* like y, got meta"),
        ("residual-shape", dict(y=y, residual=y[:, :, :3]), RuntimeError,
         r"residual must have shape \(2, 3, 4, 5\) like y, got \(2, 3, 3, 5\)"),
        ("residual-dtype", dict(y=y, residual=y.to(torch.int32)), RuntimeError, r"residual dtype .* got torch.int32"),
        ("act-unknown", dict(y=y, act="gelu"), ValueError, r"unknown activation 'gelu'"),
        ("centre-shape", dict(y=y, centre=torch.randn(3, 2, device=device)), RuntimeError,
         r"centre must have shape \(N, C\) = \(2, 3\), \(1, C\) or \(C,\) with C = 3, got \(3, 2\)"),
        ("centre-4d", dict(y=y, centre=nc[:, :, None, None]), RuntimeError, r"centre must have shape .* got \(2, 3, 1, 1\)"),
        ("centre-dtype", dict(y=y, centre=nc.double()), RuntimeError, r"centre dtype .* got torch.float64"),
        ("centre-int", dict(y=y, centre=nc.long()), RuntimeError, r"centre dtype .* got torch.int64"),
        ("centre-device", dict(y=y, centre=torch.randn(2, 3, device="meta")), RuntimeError,
         r"centre must be on .* like y, got meta"),
        ("centre-not-tensor", dict(y=y, centre=[0.0, 1.0, 2.0]), RuntimeError, r"centre must be a tensor or None, got list"),
    ]


BAD_IDS = [c[0] for c in _bad("cpu")]


@pytest.mark.parametrize("case", range(len(BAD_IDS)), ids=BAD_IDS)
def test_bad_input_raises_before_launch(case, device):
    _, kwargs, exc, match = _bad(device)[case]
    before = dict(LAUNCH_COUNTS)
    with pytest.raises(exc, match=match):
        affine_act(**kwargs)
    assert dict(LAUNCH_COUNTS) == before


@pytest.mark.gpu
@pytest.mark.parametrize("shape,act,slope,terms,dtype",
                         grid(SHAPES + [(4, 96, 33, 40), (2, 300, 17, 9)], ACTS, [ALL, NONE, (True, False, True)],
                              [torch.float32, torch.float16, torch.bfloat16], "-gpu"))
def test_gpu_grid(shape, act, slope, terms, dtype):
    """The same grid compiled for the GPU in every dtype, with default and small tiles, plus
    sizes with many pixel tiles and channel blocks."""
    check(shape, act, slope, terms, dtype, "cuda")
    check(shape, act, slope, terms, dtype, "cuda", blocks=SMALL_TILES)


@pytest.mark.gpu
@pytest.mark.parametrize("shape,act,slope,terms,dtype",
                         grid(SHAPES + [(4, 96, 33, 40), (2, 300, 17, 9)], CENTRED_ACTS, [ALL, (True, False, False)],
                              [torch.float32, torch.float16, torch.bfloat16], "-centre-gpu"))
def test_gpu_centred_grid(shape, act, slope, terms, dtype):
    check(shape, act, slope, terms, dtype, "cuda", centre=True)
    check(shape, act, slope, terms, dtype, "cuda", blocks=SMALL_TILES, centre=True)


@pytest.mark.gpu
def test_gpu_centre_keeps_float32_accuracy_where_mean_dwarfs_std():
    test_centre_keeps_float32_accuracy_where_mean_dwarfs_std("cuda")
