"""Triton recurrence kernels (one layer, one direction) against the float64 reference:
every output and every gradient, resident and streamed modes, packed lengths, both directions.
Outputs are NaN-poisoned before launch (conftest), so an unwritten element fails the test."""

import contextlib
import zlib

import pytest
import torch

from recgen.ops import LAUNCH_COUNTS
from recgen.ops.common.tiling import forced_tiles
from recgen.ops.recurrent.modes import recurrence_config
from recgen.testing import DTYPE_NAMES, TOLERANCES, compare_direction, max_rel_error, random_direction_inputs

CELLS = [("lstm", 0), ("lstm", 3), ("gru", 0), ("rnn_tanh", 0), ("rnn_relu", 0)]
# (T, B, I, H, lengths): T=1/B=1, odd H, two batch tiles (B=17), unsorted packed lengths.
SHAPES = [(5, 3, 4, 13, None), (1, 1, 3, 5, None), (4, 17, 5, 8, None), (6, 4, 3, 20, [6, 2, 4, 1])]
STREAMED_SHAPES = [(3, 3, 5, 37, [3, 1, 2]), (2, 2, 3, 20, None)]
FAMILY = {"lstm": "lstm", "gru": "gru", "rnn_tanh": "rnn", "rnn_relu": "rnn"}


def _case_id(cell, proj, shape, reverse, dtype, extra=""):
    T, B, I, H, lengths = shape
    name = "lstmp" if proj else cell
    packed = "-packed" if lengths else ""
    return f"{name}-B{B}-T{T}-H{H}{packed}{'-rev' if reverse else ''}-{DTYPE_NAMES[dtype]}{extra}"


def _grid(shapes, dtypes, extra=""):
    return [pytest.param(cell, proj, shape, reverse, dtype,
                         id=_case_id(cell, proj, shape, reverse, dtype, extra))
            for cell, proj in CELLS for shape in shapes for reverse in (False, True) for dtype in dtypes]


def _check(cell, proj, shape, reverse, dtype, device, bias=True, mode=None):
    T, B, I, H, lengths = shape
    gen = torch.Generator().manual_seed(zlib.crc32(repr((cell, proj, shape, reverse, bias)).encode()))
    inputs = random_direction_inputs(cell, T, B, I, H, proj=proj, bias=bias, dtype=dtype,
                                     device=device, generator=gen)
    family = FAMILY[cell]
    before = LAUNCH_COUNTS[f"{family}_fwd"], LAUNCH_COUNTS[f"{family}_bwd"]
    with forced_tiles(mode=mode[0], stream_block=mode[1]) if mode else contextlib.nullcontext():
        errors = compare_direction(cell, inputs, torch.tensor(lengths) if lengths else None, reverse)
    # The Triton path ran, once forward and once backward: no silent fallback.
    assert (LAUNCH_COUNTS[f"{family}_fwd"], LAUNCH_COUNTS[f"{family}_bwd"]) == (before[0] + 1, before[1] + 1)
    expected = {"y", "h_n", "dx", "dh0", "dw_ih", "dw_hh"} | ({"c_n", "dc0"} if cell == "lstm" else set()) \
        | ({"db_ih", "db_hh"} if bias else set()) | ({"dw_hr"} if proj else set())
    assert set(errors) == expected
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCES[dtype]}
    assert not bad, f"relative errors above {TOLERANCES[dtype]}: {bad}"


@pytest.mark.parametrize("cell,proj,shape,reverse,dtype", _grid(SHAPES, [torch.float32]))
def test_resident_matches_reference(cell, proj, shape, reverse, dtype, device):
    _check(cell, proj, shape, reverse, dtype, device)


@pytest.mark.parametrize("cell,proj,shape,reverse,dtype", _grid(STREAMED_SHAPES, [torch.float32], "-streamed"))
def test_streamed_matches_reference(cell, proj, shape, reverse, dtype, device):
    """Weight tiles of 16 streamed every step: several tiles in H and in P."""
    _check(cell, proj, shape, reverse, dtype, device, mode=("streamed", 16))


@pytest.mark.parametrize("cell,proj", CELLS, ids=[f"{c}{'p' if p else ''}" for c, p in CELLS])
def test_without_bias(cell, proj, device):
    _check(cell, proj, (4, 3, 5, 13, [4, 2, 3]), True, torch.float32, device, bias=False)


@pytest.mark.parametrize("cell,proj,shape,reverse,dtype",
                         _grid([(4, 3, 5, 13, [4, 2, 3])], [torch.bfloat16, torch.float16]))
def test_half_precision_io(cell, proj, shape, reverse, dtype, device):
    """bf16/fp16 inputs and weights with float32 state (on the CPU the interpreter upcasts dots)."""
    _check(cell, proj, shape, reverse, dtype, device)


def test_default_rule_streams_large_hidden(device):
    """H=160 LSTM weights (4 x 256 x 256 fp32, 1 MiB) exceed an SM's register file: only streamed
    tiles are offered; at H=13 resident ones come first."""
    assert {c.mode for c in recurrence_config(4, 160, 160, torch.float32).candidates} == {"streamed"}
    assert recurrence_config(4, 13, 13, torch.float32).candidates[0].mode == "resident"
    _check("lstm", 0, (2, 2, 3, 160, None), False, torch.float32, device)


def test_forced_tiles_validate():
    with pytest.raises(ValueError, match="unknown recurrence mode 'fast'"):
        with forced_tiles(mode="fast"):
            pass
    with pytest.raises(ValueError, match="block must be a power of two >= 16, got 24"):
        with forced_tiles(mode="streamed", stream_block=24):
            pass


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_padding_is_zero_and_final_state_is_last_valid_step(cell, device):
    from recgen.backend import backend
    from recgen.functional import run_direction
    T, B, lengths = 5, 3, torch.tensor([5, 2, 3])
    inputs = random_direction_inputs(cell, T, B, 4, 6, device=device, generator=torch.Generator().manual_seed(1))
    order = ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"]
    for reverse in (False, True):
        with backend("triton"), torch.no_grad():
            y, h_n, _ = run_direction(cell, *[inputs[n] for n in order], lengths=lengths, reverse=reverse)
        pad = torch.arange(T).unsqueeze(1) >= lengths.unsqueeze(0)
        assert (y[pad.to(y.device)] == 0).all()
        last = torch.zeros(B, dtype=torch.long) if reverse else lengths - 1
        torch.testing.assert_close(h_n, y[last.to(y.device), torch.arange(B, device=y.device)])


@pytest.mark.gpu
@pytest.mark.parametrize("cell,proj,shape,reverse,dtype",
                         _grid(SHAPES + [(64, 40, 96, 200, None)], [torch.float32, torch.float16, torch.bfloat16], "-gpu"))
def test_gpu_grid(cell, proj, shape, reverse, dtype):
    """The same grid compiled for the GPU in every dtype, plus a streamed-size case."""
    _check(cell, proj, shape, reverse, dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("cell,proj", CELLS, ids=[f"{c}{'p' if p else ''}" for c, p in CELLS])
def test_gpu_streamed(cell, proj):
    _check(cell, proj, (16, 33, 40, 100, list(range(16, 0, -1)) * 2 + [7]), True, torch.float32, "cuda",
           mode=("streamed", 32))


@pytest.mark.parametrize("cell,proj", CELLS, ids=[f"{c}{'p' if p else ''}" for c, p in CELLS])
@pytest.mark.parametrize("mode", [None, ("streamed", 16)], ids=["resident", "streamed"])
def test_bidirectional_layer_is_one_launch(cell, proj, mode, device):
    """Both directions of a layer run in one launch each way (a program per batch tile and
    direction), and match the float64 reference of each direction: outputs and all gradients."""
    from recgen.backend import backend
    from recgen.functional import run_layer
    T, B, I, H = 5, 4, 3, 20
    lengths = torch.tensor([5, 2, 4, 1])
    gen = torch.Generator().manual_seed(zlib.crc32(f"{cell}{proj}{mode}".encode()))
    dirs = [random_direction_inputs(cell, T, B, I, H, proj=proj, device=device, generator=gen) for _ in range(2)]
    names = ["w_ih", "w_hh", "b_ih", "b_hh", "w_hr"]
    x = dirs[0]["x"]
    h0 = torch.stack([d["h0"] for d in dirs])
    c0 = torch.stack([d["c0"] for d in dirs]) if cell == "lstm" else None
    leaves = {"x": x, "h0": h0, **({"c0": c0} if c0 is not None else {}),
              **{f"{n}{k}": dirs[k][n] for n in names for k in range(2) if dirs[k][n] is not None}}
    tri = {n: v.detach().clone().requires_grad_() for n, v in leaves.items()}
    ref = {n: v.detach().to(torch.float64).requires_grad_() for n, v in leaves.items()}

    def run(t):
        groups = [tuple(t.get(f"{n}{k}") for n in names) for k in range(2)]
        return run_layer(cell, t["x"], t["h0"], t.get("c0"), groups, lengths)

    family = FAMILY[cell]
    before = LAUNCH_COUNTS[f"{family}_fwd"], LAUNCH_COUNTS[f"{family}_bwd"]
    with forced_tiles(mode=mode[0], stream_block=mode[1]) if mode else contextlib.nullcontext(), backend("triton"):
        out_t = [o for o in run(tri) if o is not None]
        grads = [torch.rand_like(o) - 0.5 for o in out_t]
        torch.autograd.backward(out_t, grads)
    with backend("reference"):
        out_r = [o for o in run(ref) if o is not None]
        torch.autograd.backward(out_r, [g.double() for g in grads])
    assert (LAUNCH_COUNTS[f"{family}_fwd"], LAUNCH_COUNTS[f"{family}_bwd"]) == (before[0] + 1, before[1] + 1)
    errors = {f"out{i}": max_rel_error(a, b) for i, (a, b) in enumerate(zip(out_t, out_r))}
    errors.update({f"d{n}": max_rel_error(tri[n].grad, ref[n].grad) for n in leaves})
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCES[torch.float32]}
    assert not bad, bad
