"""The persistent multi-program forwards and backwards (kernels/recurrent/lstm_persistent.py,
kernels/recurrent/gru_persistent.py, kernels/recurrent/rnn_persistent.py) against the float64 reference: every output
and gradient, odd sizes, packed lengths both ways, both directions.

On the CPU the mode runs one launch per step (the interpreter runs one program at a time, so the
grid barrier cannot be exercised; tests/test_barrier.py runs its single-program form and its
timeout); the `gpu` tests run the single launch with the barrier, its error flag read on the
host after each launch (RECGEN_CHECK_BARRIER=1), so that a barrier that ran out fails them
with the kernel, grid and plan named."""

import itertools

import pytest
import torch

import recgen
from recgen.ops import LAUNCH_COUNTS
from recgen.ops.common.tiling import forced_tiles, persistent_plans
from recgen.ops.recurrent.modes import recurrence_config
from recgen.testing import TOLERANCES, compare_direction, max_rel_error, random_direction_inputs


@pytest.fixture(autouse=True)
def _check_barrier(monkeypatch):
    monkeypatch.setenv("RECGEN_CHECK_BARRIER", "1")


CASES = [
    # (T, B, I, H, lengths, reverse)
    pytest.param(5, 3, 4, 20, None, False, id="H20-two-column-blocks"),
    pytest.param(1, 1, 3, 16, None, True, id="T1-B1-reverse"),
    pytest.param(4, 3, 5, 33, [4, 2, 1], False, id="odd-H-lengths"),
    pytest.param(4, 3, 5, 24, [3, 4, 1], True, id="lengths-reverse"),
]


@pytest.mark.parametrize("T,B,I,H,lengths,reverse", CASES)
def test_persistent_forward_matches_reference(device, T, B, I, H, lengths, reverse):
    gen = torch.Generator().manual_seed(T * 100 + H)
    inputs = random_direction_inputs("lstm", T, B, I, H, device=device, generator=gen)
    lengths = None if lengths is None else torch.tensor(lengths)
    before = dict(LAUNCH_COUNTS)
    with forced_tiles(mode="persistent"):
        errors = compare_direction("lstm", inputs, lengths=lengths, reverse=reverse)
    for name in ("lstm_fwd_persistent", "lstm_bwd_persistent"):
        assert LAUNCH_COUNTS[name] > before.get(name, 0), f"{name} did not run"
    assert LAUNCH_COUNTS["lstm_bwd"] == before.get("lstm_bwd", 0)
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCES[torch.float32]}
    assert not bad, bad


# GRU with and without b_hh (it sits inside r * (...) in the kernel), tanh and relu RNNs.
GRU_RNN_CELLS = [pytest.param("gru", True, id="gru"), pytest.param("gru", False, id="gru-no-bias"),
                 pytest.param("rnn_tanh", True, id="rnn_tanh"), pytest.param("rnn_relu", True, id="rnn_relu")]


@pytest.mark.parametrize("cell,bias", GRU_RNN_CELLS)
@pytest.mark.parametrize("T,B,I,H,lengths,reverse", CASES)
def test_persistent_gru_rnn_match_reference(device, cell, bias, T, B, I, H, lengths, reverse):
    """Both persistent kernels of the cell ran (one launch per step, and per phase backward)
    and the single-program ones did not; every output and gradient against float64."""
    gen = torch.Generator().manual_seed(T * 100 + H)
    inputs = random_direction_inputs(cell, T, B, I, H, bias=bias, device=device, generator=gen)
    lengths = None if lengths is None else torch.tensor(lengths)
    base = cell.split("_")[0]
    before = dict(LAUNCH_COUNTS)
    with forced_tiles(mode="persistent"):
        errors = compare_direction(cell, inputs, lengths=lengths, reverse=reverse)
    for name in (f"{base}_fwd_persistent", f"{base}_bwd_persistent"):
        assert LAUNCH_COUNTS[name] > before.get(name, 0), f"{name} did not run"
    for name in (f"{base}_fwd", f"{base}_bwd"):
        assert LAUNCH_COUNTS[name] == before.get(name, 0), f"{name} ran"
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCES[torch.float32]}
    assert not bad, bad


# The launcher's other plan shapes: (forced plan, B, expected grid at H=20, lengths when packed).
# groups=1: one program group per direction steps through all three 16-row batch tiles of B=37
# per step (what the launcher does when the device cannot hold a group per tile). columns=8: the
# narrow fallback (8 hidden units per program, where 16 spill or do not fit: float32 LSTM/GRU at
# H=1024), H=20 as three column blocks, the last one masked.
PLAN_SHAPES = [
    pytest.param({"groups": 1}, 37, (2, 1, 1), [3, 1, 2] * 12 + [3], id="one-group-loops-over-tiles"),
    pytest.param({"columns": 8}, 5, (3, 1, 1), [3, 1, 2, 3, 2], id="eight-columns-per-program"),
]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("packed,reverse", [(False, False), (True, True)], ids=["full", "lengths-rev"])
@pytest.mark.parametrize("forced,B,grid,lengths", PLAN_SHAPES)
def test_persistent_plan_shapes(device, cell, packed, reverse, forced, B, grid, lengths):
    """Forward and backward of each cell with the plan forced, against the reference."""
    gen = torch.Generator().manual_seed(B)
    inputs = random_direction_inputs(cell, 3, B, 4, 20, device=device, generator=gen)
    lengths = torch.tensor(lengths) if packed else None
    base = cell.split("_")[0]
    before = dict(LAUNCH_COUNTS)
    with forced_tiles(mode="persistent", **forced):
        assert recurrence_config(1, 20, 20, torch.float32, batch=B, persistent_capable=True).persistent[0] \
            .grid(B, 20, 1) == grid
        errors = compare_direction(cell, inputs, lengths=lengths, reverse=reverse)
    for name in (f"{base}_fwd_persistent", f"{base}_bwd_persistent"):
        assert LAUNCH_COUNTS[name] > before.get(name, 0), f"{name} did not run"
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCES[torch.float32]}
    assert not bad, bad


def test_persistent_module_bidirectional_and_no_grad(device):
    """A bidirectional 2-layer LSTM in the persistent mode equals torch.nn.LSTM, with and without
    gradients (save=False skips the saved tensors)."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 18, num_layers=2, bidirectional=True).to(device)
    rec = recgen.nn.LSTM(3, 18, num_layers=2, bidirectional=True).to(device)
    rec.load_state_dict(ref.state_dict())
    x = torch.randn(4, 2, 3, device=device)
    with forced_tiles(mode="persistent"):
        before = LAUNCH_COUNTS["lstm_fwd_persistent"]
        with torch.no_grad():
            y, (h, c) = rec(x)
        assert LAUNCH_COUNTS["lstm_fwd_persistent"] > before
        xg = x.clone().requires_grad_()
        yg, _ = rec(xg)
        yg.square().sum().backward()
    y_ref, (h_ref, c_ref) = ref(x)
    for a, b in ((y, y_ref), (h, h_ref), (c, c_ref), (yg, y_ref)):
        assert max_rel_error(a, b) <= TOLERANCES[torch.float32]
    x_ref = x.clone().requires_grad_()
    ref(x_ref)[0].square().sum().backward()
    assert max_rel_error(xg.grad, x_ref.grad) <= TOLERANCES[torch.float32]


@pytest.mark.parametrize("cls,kwargs", [(torch.nn.GRU, {}), (torch.nn.RNN, {"nonlinearity": "relu"})],
                         ids=["GRU", "RNN-relu"])
def test_persistent_gru_rnn_module_bidirectional_and_no_grad(device, cls, kwargs):
    """A bidirectional 2-layer GRU / relu RNN in the persistent mode equals torch.nn's, with and
    without gradients (save=False skips the saved tensors): outputs, dx and every dW."""
    torch.manual_seed(0)
    ref = cls(3, 18, num_layers=2, bidirectional=True, **kwargs).to(device)
    rec = getattr(recgen.nn, cls.__name__)(3, 18, num_layers=2, bidirectional=True, **kwargs).to(device)
    rec.load_state_dict(ref.state_dict())
    base = cls.__name__.lower()
    x = torch.randn(4, 2, 3, device=device)
    with forced_tiles(mode="persistent"):
        before = dict(LAUNCH_COUNTS)
        with torch.no_grad():
            y, h = rec(x)
        assert LAUNCH_COUNTS[f"{base}_fwd_persistent"] > before.get(f"{base}_fwd_persistent", 0)
        xg = x.clone().requires_grad_()
        yg, hg = rec(xg)
        (yg.square().sum() + hg.sum()).backward()
        assert LAUNCH_COUNTS[f"{base}_bwd_persistent"] > before.get(f"{base}_bwd_persistent", 0)
        assert LAUNCH_COUNTS[f"{base}_fwd"] == before.get(f"{base}_fwd", 0)
    x_ref = x.clone().requires_grad_()
    y_ref, h_ref = ref(x_ref)
    (y_ref.square().sum() + h_ref.sum()).backward()
    for a, b in ((y, y_ref), (h, h_ref), (yg, y_ref), (hg, h_ref), (xg.grad, x_ref.grad)):
        assert max_rel_error(a, b) <= TOLERANCES[torch.float32]
    for (name, p), q in zip(rec.named_parameters(), ref.parameters()):
        assert max_rel_error(p.grad, q.grad) <= TOLERANCES[torch.float32], name


def test_mode_rule():
    """Persistent only for a launcher that has it (the LSTM without projection, GRU, RNN), only
    when forced or opted in on a GPU; its candidate tiles cover H in blocks of 16 columns, then
    of 8 (the fallback)."""
    with forced_tiles(mode="persistent"):
        assert recurrence_config(4, 1024, 1024, torch.bfloat16, batch=40, persistent_capable=True).persistent \
            == persistent_plans(40, 1024)
        assert recurrence_config(4, 1024, 1024, torch.bfloat16, persistent_capable=False).persistent is None
    # Without forcing, the CPU never picks it (and a GPU only with RECGEN_PERSISTENT=1).
    assert recurrence_config(4, 1024, 1024, torch.bfloat16, persistent_capable=True).persistent is None
    plans = persistent_plans(40, 1000)
    shapes = [(p.block_b, p.block_h, p.block_p, p.num_warps) for p in plans]
    # Every combination once, h_{t-1} read whole (H padded); 16 units per program before 8, then
    # fewer rows per tile first, then 4 warps before 8.
    assert sorted(shapes) == sorted(itertools.product((16, 32, 64), (16, 8), (1024,), (4, 8)))
    assert shapes == sorted(shapes, key=lambda s: (-s[1], s[0], s[3]))
    assert plans[0].grid(40, 1000, 2) == (63, 2, 3)
    assert plans[5].grid(40, 1000, 2) == (63, 2, 1)
    assert plans[-1].grid(40, 1000, 2) == (125, 2, 1)
    assert {p.block_h for p in persistent_plans(40, 1000, columns=8)} == {8}
    with pytest.raises(ValueError, match="columns must be 0 .* got 4"):
        forced_tiles(mode="persistent", columns=4)
    # Never more rows per program than the batch needs.
    assert {p.block_b for p in persistent_plans(1, 100)} == {16}
    assert {p.block_b for p in persistent_plans(17, 100)} == {16, 32}


@pytest.mark.gpu
@pytest.mark.parametrize("H,B,dtype,groups", [(256, 16, torch.bfloat16, 0), (512, 64, torch.bfloat16, 0),
                                              (1024, 16, torch.bfloat16, 0), (512, 100, torch.float32, 0),
                                              (512, 64, torch.bfloat16, 1), (1024, 256, torch.bfloat16, 0)])
def test_persistent_single_launch_on_gpu(H, B, dtype, groups):
    """The real thing: one launch each way, the grid barrier every step, against torch.nn.LSTM
    (cuDNN), every output and gradient; co-residency is checked by the launcher (a fallback to
    streamed would fail the counts). groups=1: each program steps through all batch tiles (as
    at B=256, H=1024, where the device cannot hold a group per tile)."""
    torch.manual_seed(1)
    ref = torch.nn.LSTM(H, H, bidirectional=True).cuda().to(dtype)
    rec = recgen.nn.LSTM(H, H, bidirectional=True).cuda().to(dtype)
    rec.load_state_dict(ref.state_dict())
    x = torch.randn(64, B, H, device="cuda", dtype=dtype)
    before = dict(LAUNCH_COUNTS)
    x_rec, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    with forced_tiles(mode="persistent", groups=groups):
        y, (h, c) = rec(x_rec)
        y.float().square().sum().backward()
    torch.cuda.synchronize()
    for name in ("lstm_fwd_persistent", "lstm_bwd_persistent"):
        assert LAUNCH_COUNTS[name] == before.get(name, 0) + 1, name
    y_ref, (h_ref, c_ref) = ref(x_ref)
    y_ref.float().square().sum().backward()
    for a, b in ((y, y_ref), (h, h_ref), (c, c_ref), (x_rec.grad, x_ref.grad)):
        assert max_rel_error(a, b) <= TOLERANCES[dtype]
    for (name, p), q in zip(rec.named_parameters(), ref.parameters()):
        assert max_rel_error(p.grad, q.grad) <= TOLERANCES[dtype], name


@pytest.mark.gpu
@pytest.mark.parametrize("cls,kwargs,H,B,dtype", [
    (torch.nn.GRU, {}, 256, 16, torch.bfloat16), (torch.nn.GRU, {}, 1024, 16, torch.bfloat16),
    (torch.nn.GRU, {"bias": False}, 512, 100, torch.float32),
    (torch.nn.RNN, {}, 512, 64, torch.bfloat16), (torch.nn.RNN, {"nonlinearity": "relu"}, 1024, 16, torch.float32),
], ids=["GRU-h256-bf16", "GRU-h1024-bf16", "GRU-nobias-h512-b100-fp32", "RNN-tanh-h512-bf16", "RNN-relu-h1024-fp32"])
def test_persistent_gru_rnn_single_launch_on_gpu(cls, kwargs, H, B, dtype):
    """As test_persistent_single_launch_on_gpu for the GRU and the Elman RNN: one launch each way
    with the grid barrier every step, against torch.nn (cuDNN), every output and gradient."""
    torch.manual_seed(1)
    ref = cls(H, H, bidirectional=True, **kwargs).cuda().to(dtype)
    rec = getattr(recgen.nn, cls.__name__)(H, H, bidirectional=True, **kwargs).cuda().to(dtype)
    rec.load_state_dict(ref.state_dict())
    base = cls.__name__.lower()
    x = torch.randn(64, B, H, device="cuda", dtype=dtype)
    before = dict(LAUNCH_COUNTS)
    x_rec, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    with forced_tiles(mode="persistent"):
        y, h = rec(x_rec)
        (y.float().square().sum() + h.float().sum()).backward()
    torch.cuda.synchronize()
    for name in (f"{base}_fwd_persistent", f"{base}_bwd_persistent"):
        assert LAUNCH_COUNTS[name] == before.get(name, 0) + 1, name
    y_ref, h_ref = ref(x_ref)
    (y_ref.float().square().sum() + h_ref.float().sum()).backward()
    for a, b in ((y, y_ref), (h, h_ref), (x_rec.grad, x_ref.grad)):
        assert max_rel_error(a, b) <= TOLERANCES[dtype]
    for (name, p), q in zip(rec.named_parameters(), ref.parameters()):
        assert max_rel_error(p.grad, q.grad) <= TOLERANCES[dtype], name


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [torch.nn.LSTM, torch.nn.GRU])
def test_persistent_float32_h1024_on_gpu(cls):
    """Float32 H=1024: a 16-unit slice of W_hh (256 KiB for the LSTM, 192 for the GRU) fits no
    SM, so the rule falls back to 8 units per program (128 programs, one per SM). One launch
    each way with the grid barrier, against torch.nn (cuDNN), every output and gradient."""
    torch.manual_seed(2)
    ref = cls(1024, 1024).cuda()
    rec = getattr(recgen.nn, cls.__name__)(1024, 1024).cuda()
    rec.load_state_dict(ref.state_dict())
    base = cls.__name__.lower()
    x = torch.randn(32, 16, 1024, device="cuda")
    before = dict(LAUNCH_COUNTS)
    x_rec, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    with forced_tiles(mode="persistent"):
        out = rec(x_rec)
        out[0].square().sum().backward()
    torch.cuda.synchronize()
    for name in (f"{base}_fwd_persistent", f"{base}_bwd_persistent"):
        assert LAUNCH_COUNTS[name] == before.get(name, 0) + 1, name
    out_ref = ref(x_ref)
    out_ref[0].square().sum().backward()
    assert max_rel_error(out[0], out_ref[0]) <= TOLERANCES[torch.float32]
    assert max_rel_error(x_rec.grad, x_ref.grad) <= TOLERANCES[torch.float32]
    for (name, p), q in zip(rec.named_parameters(), ref.parameters()):
        assert max_rel_error(p.grad, q.grad) <= TOLERANCES[torch.float32], name
