"""How the persistent mode picks its tiles (recgen/ops/recurrent/persistent.py), on the CPU: the
occupancy arithmetic on Hopper's limits, the preference rule, and the choice among compiled
candidates with a stand-in for Triton's compiled kernels and the device's properties (the real
ones run in the gpu tests of tests/test_persistent.py)."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from triton.runtime.errors import OutOfResources

from recgen.ops.recurrent import persistent
from recgen.ops.common.tiling import SM90_LIMITS, PersistentPlan, persistent_plans
from recgen.ops.recurrent.persistent import choose_plan, fitted, occupancy, pick_plan

# What torch reports for an H100/H200 (cudaDeviceProp), as the launcher reads it.
HOPPER = SimpleNamespace(multi_processor_count=132, max_threads_per_multi_processor=2048,
                         regs_per_multiprocessor=65536, shared_memory_per_multiprocessor=233472,
                         shared_memory_per_block_optin=232448)


@pytest.mark.parametrize("regs,warps,shared,expected", [
    (255, 4, 99328, 2),     # 255 registers round up to 8192 per warp: 65536 / (8192 * 4) = 2
    (128, 4, 0, 4),         # registers alone: 65536 / (4096 * 4)
    (32, 4, 0, 16),         # threads: 2048 / 128
    (190, 8, 83456, 1),     # 6144 registers per warp * 8 warps: 1 program
    (64, 4, 120000, 1),     # shared memory: 233472 // (120000 + 1024 reserved per block)
    (64, 4, 116736, 1),     # half the SM, but two programs also need 2 x 1024 reserved bytes
    (64, 4, 115712, 2),     # 1 KB less each: two fit exactly
    (32, 4, 1024, 16),      # threads, not the 2 KB per program of shared memory
    (64, 4, 232448, 1),     # exactly the per-block limit still launches
    (64, 4, 232449, 0),     # one byte more cannot launch at all
])
def test_occupancy_on_hopper_limits(regs, warps, shared, expected):
    assert occupancy(regs, warps, shared, SM90_LIMITS) == expected


def test_fitted_gives_each_plan_the_groups_that_fit():
    plan = PersistentPlan(16, 16, 1024, 8)
    # B=256: 16 tiles; H=1024: 64 column blocks. One program per SM: 132 // 64 = 2 groups.
    assert fitted(plan, 256, 1024, 1, 1, 132).grid(256, 1024, 1) == (64, 1, 2)
    assert fitted(plan, 256, 1024, 2, 1, 132).groups == 1          # two directions: 128 programs
    assert fitted(plan, 256, 2048, 2, 1, 132) is None             # 256 programs for one group each
    assert fitted(plan, 256, 1024, 1, 3, 132).groups == 6          # 396 // 64
    assert fitted(plan, 16, 1024, 1, 3, 132).groups == 1           # never more groups than tiles
    assert fitted(dataclasses.replace(plan, groups=1), 256, 1024, 1, 3, 132).groups == 1  # a forced bound
    assert plan.rows_per_step(256) == 16 and fitted(plan, 256, 1024, 1, 1, 132).rows_per_step(256) == 128


def test_pick_plan_prefers_spill_free_then_fewest_rows_per_program():
    a, b, c, d = (PersistentPlan(bb, 16, 512, 4, groups) for bb, groups in ((16, 2), (16, 16), (32, 8), (64, 4)))
    # B=256: a steps through 8 tiles (128 rows) per program, b one (16 rows): b wins, and ends
    # the search (nothing later has fewer rows); c would have come next.
    seen = []
    fits = {a: (0, a), b: (0, b), c: (0, c), d: (0, d)}
    assert pick_plan((a, b, c, d), lambda p: seen.append(p) or fits[p], 256) == b and seen == [a, b]
    # Spilling loses to any spill-free plan, whatever its rows; among spilling ones, least spill.
    assert pick_plan((b, a), {b: (64, b), a: (0, a)}.get, 256) == a
    assert pick_plan((b, c), {b: (96, b), c: (64, c)}.get, 256) == c
    # c: one 32-row tile per program, d: one 64-row tile: c (the search stops there: the
    # candidates come smallest tiles first, persistent_plans' order).
    assert pick_plan((c, d), {c: (0, c), d: (0, d)}.get, 256) == c
    # e: 4 groups over 16 tiles = 4 tiles of 16 rows = 64 rows, as d: the first of equals.
    e = PersistentPlan(16, 16, 512, 8, 4)
    assert pick_plan((e, d), {e: (0, e), d: (0, d)}.get, 256) == e
    assert pick_plan((d, e), {e: (0, e), d: (0, d)}.get, 256) == d
    assert pick_plan((a, b), lambda p: None, 256) is None


class StandInKernel:
    """Answers warmup() like a JITFunction with compiled kernels whose resources are given per
    (BLOCK_B, num_warps) for 16 hidden units per program and per (BLOCK_B, num_warps, 8) for 8;
    records each compilation, and each launch (kernel[grid](**kwargs)), or refuses launches
    with `refuse` as the driver's error; a launch leaves `flag` in the barrier's error flag (the
    last counter), as a barrier wait that ran out does."""

    def __init__(self, resources: dict, refuse: str = "", flag: int = 0):
        self.resources, self.compiled, self.launches, self.refuse, self.flag = resources, [], [], refuse, flag

    def __getitem__(self, grid):
        def run(**kwargs):
            if self.refuse:
                raise RuntimeError(self.refuse)
            self.launches.append((grid, kwargs))
            kwargs["counter_ptr"][-1] = self.flag
        return run

    def warmup(self, grid, **kwargs):
        assert kwargs["launch_cooperative_grid"] is True  # compiled as it will be launched
        key = (kwargs["BLOCK_B"], kwargs["num_warps"]) + (() if kwargs["BLOCK_H"] == 16 else (kwargs["BLOCK_H"],))
        self.compiled.append(key)
        regs, shared, spills = self.resources[key]

        def init_handles():
            if shared > HOPPER.shared_memory_per_block_optin:
                raise OutOfResources(shared, HOPPER.shared_memory_per_block_optin, "shared memory")
        return SimpleNamespace(n_regs=regs, n_spills=spills, _init_handles=init_handles,
                               metadata=SimpleNamespace(num_warps=key[1], shared=shared))


def test_choose_plan_skips_what_the_device_cannot_hold_and_caches(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: HOPPER)
    monkeypatch.setattr(persistent, "_CHOSEN", {})
    kernel = StandInKernel({
        (16, 4): (255, 99328, 64),    # fits, but spills
        (16, 8): (255, 263168, 0),    # too much shared memory: OutOfResources when loaded
        (32, 4): (255, 99328, 0),     # fits, no spills, two 32-row tiles: one each, 32 rows: taken
        (32, 8): (190, 83456, 0),     # as good, but later
        (64, 4): (255, 99328, 0), (64, 8): (255, 99328, 0),   # 64 rows per program
        (16, 4, 8): (255, 60000, 8),  # 16 rows, but spills
        (16, 8, 8): (255, 263168, 0),
        (32, 4, 8): (255, 60000, 0), (32, 8, 8): (255, 60000, 0),  # 32 rows as well: later
        (64, 4, 8): (255, 60000, 0), (64, 8, 8): (255, 60000, 0),
    })
    plans = persistent_plans(64, 512)
    args = {"T": 512, "B": 64, "H": 512, "SAVE": True, "y_ptr": torch.empty(1, dtype=torch.bfloat16)}
    chosen = choose_plan("k", kernel, plans, (64, 512, 1), torch.device("cpu"), args)
    assert (chosen.block_b, chosen.block_h, chosen.num_warps) == (32, 16, 4)
    # No spill-free plan with one 16-row tile: every candidate was compiled once, but those whose
    # tiles alone have more rows (64) than the spill-free 32-row best steps through.
    assert sorted(kernel.compiled) == sorted((p.block_b, p.num_warps) + (() if p.block_h == 16 else (8,))
                                             for p in plans if p.block_b <= 32)
    again = choose_plan("k", kernel, plans, (64, 512, 1), torch.device("cpu"), dict(args))
    assert again == chosen and len(kernel.compiled) == 8  # cached: nothing compiled again
    # A different launch key (another batch size) chooses afresh.
    choose_plan("k", kernel, plans, (64, 512, 1), torch.device("cpu"), dict(args, B=48))
    assert len(kernel.compiled) == 16


def test_choose_plan_stops_at_one_spill_free_16_row_tile(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: HOPPER)
    monkeypatch.setattr(persistent, "_CHOSEN", {})
    kernel = StandInKernel({(16, 4): (255, 99328, 64), (16, 8): (190, 83456, 0)})
    chosen = choose_plan("k", kernel, persistent_plans(64, 512), (64, 512, 1), torch.device("cpu"), {})
    assert (chosen.block_b, chosen.block_h, chosen.num_warps, chosen.groups) == (16, 16, 8, 4)
    assert sorted(kernel.compiled) == [(16, 4), (16, 8)]  # the 32- and 64-row plans never compiled


def test_choose_plan_loops_over_tiles_when_a_group_per_tile_does_not_fit(monkeypatch):
    """B=256, H=1024 at 16 rows per tile is 64 x 16 = 1024 programs, but an SM holds one: 132
    programs, two groups of 64, each stepping through 8 tiles. Every candidate ends up at 128
    rows per program and step, so the first is taken."""
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: HOPPER)
    monkeypatch.setattr(persistent, "_CHOSEN", {})
    kernel = StandInKernel({key: (255, 165376, 0) for b in (16, 32, 64) for w in (4, 8)
                            for key in ((b, w), (b, w, 8))})
    plans = persistent_plans(256, 1024)
    chosen = choose_plan("k", kernel, plans, (256, 1024, 1), torch.device("cpu"), {"B": 256})
    assert chosen == PersistentPlan(16, 16, 1024, 4, groups=2) and chosen.rows_per_step(256) == 128
    # 8 units per program: 128 programs per group, one group, 16 tiles (256 rows) each: worse.
    assert len(kernel.compiled) == len(plans) == 12
    # Bidirectional at B=16: 64 columns x 2 directions = 128 programs, one per SM: one group each.
    small = persistent_plans(16, 1024)
    chosen = choose_plan("k", kernel, small, (16, 1024, 2), torch.device("cpu"), {"B": 16})
    assert chosen == PersistentPlan(16, 16, 1024, 4, groups=1)


def test_choose_plan_none_when_nothing_fits(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: HOPPER)
    monkeypatch.setattr(persistent, "_CHOSEN", {})
    too_big = StandInKernel({key: (255, 263168, 0) for b in (16, 32, 64) for w in (4, 8)
                             for key in ((b, w), (b, w, 8))})
    assert choose_plan("k", too_big, persistent_plans(64, 1024), (64, 1024, 1), torch.device("cpu"), {}) is None
    # 2048 hidden units are 128 column blocks: two directions (256 programs) exceed 132 SMs at one each.
    one_per_sm = StandInKernel({key: (255, 165376, 0) for b in (16, 32, 64) for w in (4, 8)
                                for key in ((b, w), (b, w, 8))})
    assert choose_plan("k", one_per_sm, persistent_plans(16, 2048), (16, 2048, 2), torch.device("cpu"), {}) is None


def test_choose_plan_falls_back_to_eight_columns(monkeypatch):
    """Float32 LSTM at H=1024: no 16-unit candidate loads (a 256 KiB W_hh slice), so the 8-unit
    ones are compiled and the first that fits is taken: 128 column blocks, one program per SM,
    one group. Where the 16-unit candidates only spill (the bf16 LSTM backward at H=1024), a
    spill-free 8-unit one beats them; a spilling one does not beat a smaller spill."""
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: HOPPER)
    monkeypatch.setattr(persistent, "_CHOSEN", {})
    fp32 = StandInKernel({**{(b, w): (255, 280000, 0) for b in (16, 32, 64) for w in (4, 8)},
                          (16, 4, 8): (255, 150000, 512), (16, 8, 8): (200, 150000, 0)})
    chosen = choose_plan("k", fp32, persistent_plans(16, 1024), (16, 1024, 1), torch.device("cpu"), {"B": 16})
    assert chosen == PersistentPlan(16, 8, 1024, 8, groups=1)
    assert sorted(fp32.compiled) == [(16, 4), (16, 4, 8), (16, 8), (16, 8, 8)]
    # Both directions would be 256 programs at one per SM: more than 132, so it streams.
    assert choose_plan("k", fp32, persistent_plans(16, 1024), (16, 1024, 2), torch.device("cpu"), {"B": 16}) is None
    spilling = StandInKernel({(16, 4): (255, 99328, 744), (16, 8): (255, 99328, 800),
                              (16, 4, 8): (255, 60000, 0), (16, 8, 8): (255, 60000, 0)})
    chosen = choose_plan("k2", spilling, persistent_plans(16, 1024), (16, 1024, 1), torch.device("cpu"), {})
    assert chosen == PersistentPlan(16, 8, 1024, 4, groups=1)
    worse = StandInKernel({(16, 4): (255, 99328, 744), (16, 8): (255, 99328, 800),
                           (16, 4, 8): (255, 60000, 900), (16, 8, 8): (255, 60000, 1000)})
    chosen = choose_plan("k3", worse, persistent_plans(16, 1024), (16, 1024, 1), torch.device("cpu"), {})
    assert chosen == PersistentPlan(16, 16, 1024, 4, groups=1)


def test_pick_plan_prefers_fewer_rows_then_wider_columns():
    wide, narrow = PersistentPlan(16, 16, 1024, 4), PersistentPlan(16, 8, 1024, 4)
    wide64 = PersistentPlan(64, 16, 1024, 4)
    # wide64 is spill-free but steps through 4 tiles (256 rows); the narrow plan through one.
    fits = {wide64: (0, dataclasses.replace(wide64, groups=1)), narrow: (0, dataclasses.replace(narrow, groups=16))}
    assert pick_plan((wide64, narrow), fits.get, 256).block_h == 8
    # Equal rows: the wider (earlier) plan; a spill-free plan beats a spilling one whatever its width.
    assert pick_plan((wide, narrow), {wide: (0, wide), narrow: (0, narrow)}.get, 16) == wide
    assert pick_plan((wide, narrow), {wide: (8, wide), narrow: (0, narrow)}.get, 16) == narrow
    assert pick_plan((wide, narrow), {narrow: (0, narrow)}.get, 16) == narrow


# What the CUDA driver answers for the codes these tests name (cuGetErrorName, cuGetErrorString).
DRIVER_ERRORS = {720: ("CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE", "too many blocks in cooperative launch")}


def standin_gpu(monkeypatch):
    """The launcher as on a GPU: the interpreter switched off, Hopper's properties, the driver's
    error texts, nothing chosen yet. Returns the candidates, shape and device of a launch."""
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: HOPPER)
    monkeypatch.setattr(persistent, "_CHOSEN", {})
    monkeypatch.setattr(persistent, "interpreting", lambda: False)
    monkeypatch.setattr(persistent, "cuda_error_texts", DRIVER_ERRORS.__getitem__)
    return persistent_plans(16, 512), (16, 512, 1), torch.device("cpu")


def test_run_persistent_launches_cooperatively_and_streams_when_refused(monkeypatch):
    """On a GPU (the interpreter switched off here, the kernel a stand-in): one cooperative launch
    of the whole sequence, counted, with the barrier's counters (one, then the error flag) and
    spin budget; when the driver refuses the grid as not co-resident, nothing is counted, the
    caller is told to stream, and the key streams from then on without compiling again; any
    other launch error propagates."""
    from recgen.ops import LAUNCH_COUNTS

    plans, shape, cpu = standin_gpu(monkeypatch)
    kernel = StandInKernel({(16, 4): (255, 99328, 0)})
    before = LAUNCH_COUNTS["standin"]
    assert persistent.run_persistent("standin", kernel, plans, shape, 8, cpu, {"B": 16})
    (grid, kwargs), = kernel.launches
    assert grid == (32, 1, 1) and kwargs["launch_cooperative_grid"] is True and kwargs["GRID_SYNC"] is True
    assert (kwargs["step_begin"], kwargs["step_end"]) == (0, 8) and kwargs["counter_ptr"].tolist() == [0, 0]
    assert kwargs["spin_limit"] == persistent.SPIN_LIMIT == 2 ** 24
    assert LAUNCH_COUNTS["standin"] == before + 1

    refused = StandInKernel({(16, 4): (255, 99328, 0)}, refuse="Triton Error [CUDA]: too many blocks in "
                                                               "cooperative launch")
    assert not persistent.run_persistent("refused", refused, plans, shape, 8, cpu, {"B": 16})
    assert LAUNCH_COUNTS["refused"] == 0 and refused.compiled == [(16, 4)]
    assert not persistent.run_persistent("refused", refused, plans, shape, 8, cpu, {"B": 16})
    assert refused.compiled == [(16, 4)]  # the key now streams: nothing compiled again

    broken = StandInKernel({(16, 4): (255, 99328, 0)}, refuse="Triton Error [CUDA]: an illegal memory access")
    with pytest.raises(RuntimeError, match="illegal memory access"):
        persistent.run_persistent("broken", broken, plans, shape, 8, cpu, {"B": 16})

    # A Triton without cooperative launches: the persistent mode is not used at all.
    assert persistent.cooperative_launch_supported()  # this Triton (3.9) has them
    monkeypatch.setattr(persistent, "cooperative_launch_supported", lambda: False)
    old = StandInKernel({})
    assert not persistent.run_persistent("old", old, plans, shape, 8, cpu, {"B": 16})
    assert old.compiled == [] and old.launches == []


@pytest.mark.parametrize("message,refused", [
    ("Triton Error [CUDA]: too many blocks in cooperative launch", True),  # Triton 3.x: cuGetErrorString(720)
    ("CUDA driver error CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE (720)", True),  # a Triton naming the code
    # The word "cooperative" is no longer enough: another error that mentions it propagates.
    ("Triton Error [CUDA]: cooperative launch failed: an illegal instruction was encountered", False),
    ("Triton Error [CUDA]: too many blocks in cooperative launch, and more", False),
    ("Triton Error [CUDA]: CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGER", False),
], ids=["description", "name", "word-only", "longer-description", "longer-name"])
def test_refused_cooperative_launch_is_recognised_by_its_error_code(monkeypatch, message, refused):
    plans, shape, cpu = standin_gpu(monkeypatch)
    kernel = StandInKernel({(16, 4): (255, 99328, 0)}, refuse=message)
    if refused:
        assert not persistent.run_persistent("refused", kernel, plans, shape, 8, cpu, {"B": 16})
        assert persistent.is_cuda_error(RuntimeError(message), 720)
    else:
        with pytest.raises(RuntimeError) as raised:
            persistent.run_persistent("refused", kernel, plans, shape, 8, cpu, {"B": 16})
        assert str(raised.value) == message


PLAN_TEXT = (r"standin \(StandInKernel, grid \(32, 1, 1\), plan: 1 batch tiles of 16 rows, 32 column blocks of 16 "
             r"hidden units, 1 groups per direction \(1 directions\), 4 warps\)")


@pytest.mark.parametrize("env", ["1", "0"])
def test_timed_out_barrier_raises_with_kernel_grid_and_plan(monkeypatch, env):
    """A launch whose barrier ran out (the stand-in sets the flag to the target of step 2 of 8:
    3 x 32 column blocks) raises: with RECGEN_CHECK_BARRIER=1 a RuntimeError from the host read,
    naming the step; without it from torch._assert_async (on the GPU a device-side assert at
    the next sync, no host read; on these CPU tensors it raises at once)."""
    plans, shape, cpu = standin_gpu(monkeypatch)
    monkeypatch.setenv("RECGEN_CHECK_BARRIER", env)
    read = []
    monkeypatch.setattr(torch.Tensor, "item", lambda self: read.append(self) or self.tolist())
    kernel = StandInKernel({(16, 4): (255, 99328, 0)}, flag=3 * 32)
    detail = r": the grid barrier of step 2 \(of 8\) ran out of its 16777216 polls" if env == "1" else \
        r": a grid barrier ran out of its 16777216 polls"
    with pytest.raises(RuntimeError, match="^" + PLAN_TEXT + detail):
        persistent.run_persistent("standin", kernel, plans, shape, 8, cpu, {"B": 16})
    assert len(read) == (env == "1")  # the host reads the flag only when asked to
    # A launch whose barriers all completed passes either check.
    fine = StandInKernel({(16, 4): (255, 99328, 0)})
    assert persistent.run_persistent("standin", fine, plans, shape, 8, cpu, {"B": 16})


def test_no_persistent_launch_where_the_barrier_targets_could_reach_the_release_value(monkeypatch):
    """The int32 counters count steps x column blocks; at 2**30 they would read as released."""
    plans, _, cpu = standin_gpu(monkeypatch)
    kernel = StandInKernel({(16, 4): (255, 99328, 0)})
    # 1024 hidden units: at most 128 column blocks (8 units each); 2**23 steps reach 2**30.
    assert not persistent.run_persistent("long", kernel, persistent_plans(16, 1024), (16, 1024, 1), 2 ** 23,
                                               cpu, {"B": 16})
    assert kernel.compiled == [] and kernel.launches == []


@pytest.mark.gpu
def test_driver_error_texts_and_a_real_refused_cooperative_launch():
    """The driver's name and description of 720, and a cooperative grid far larger than an SM
    count times any occupancy: the driver refuses it with that error, recognised by its code."""
    import triton
    import triton.language as tl

    @triton.jit
    def _noop(x_ptr):
        tl.store(x_ptr + tl.program_id(0), 1)

    name, description = persistent.cuda_error_texts(720)
    assert name == "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE" and description
    x = torch.zeros(2 ** 22, dtype=torch.int32, device="cuda")
    with pytest.raises(RuntimeError) as raised:
        _noop[(2 ** 22,)](x, launch_cooperative_grid=True)
    assert persistent.is_cuda_error(raised.value, 720), str(raised.value)
