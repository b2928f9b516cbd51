"""How the persistent mode picks its tiles (recgen/ops/persistent_tiles.py), on the CPU: the
occupancy arithmetic on Hopper's limits, the preference rule, and the choice among compiled
candidates with a stand-in for Triton's compiled kernels and the device's properties (the real
ones run in the gpu tests of tests/test_persistent.py)."""

from types import SimpleNamespace

import pytest
import torch
from triton.runtime.errors import OutOfResources

from recgen.aot import SM90_LIMITS
from recgen.ops import persistent_tiles
from recgen.ops.persistent_tiles import PersistentPlan, choose_plan, occupancy, persistent_plans, pick_plan

# What torch reports for an H100/H200 (cudaDeviceProp), as the launcher reads it.
HOPPER = SimpleNamespace(multi_processor_count=132, max_threads_per_multi_processor=2048,
                         regs_per_multiprocessor=65536, shared_memory_per_multiprocessor=233472,
                         shared_memory_per_block_optin=232448)


@pytest.mark.parametrize("regs,warps,shared,expected", [
    (255, 4, 99328, 2),     # 255 registers round up to 8192 per warp: 65536 / (8192 * 4) = 2
    (128, 4, 0, 4),         # registers alone: 65536 / (4096 * 4)
    (32, 4, 0, 16),         # threads: 2048 / 128
    (190, 8, 83456, 1),     # 6144 registers per warp * 8 warps: 1 program
    (64, 4, 120000, 1),     # shared memory: 233472 // 120000
    (64, 4, 232448, 1),     # exactly the per-block limit still launches
    (64, 4, 232449, 0),     # one byte more cannot launch at all
])
def test_occupancy_on_hopper_limits(regs, warps, shared, expected):
    assert occupancy(regs, warps, shared, SM90_LIMITS) == expected


def test_pick_plan_prefers_the_first_spill_free_fit():
    plans = ("a", "b", "c", "d")
    assert pick_plan(plans, {"a": None, "b": 64, "c": 0, "d": 0}.get) == "c"
    assert pick_plan(plans, {"a": 96, "b": 64, "c": None, "d": 64}.get) == "b"
    assert pick_plan(plans, lambda plan: None) is None


class StandInKernel:
    """Answers warmup() like a JITFunction with compiled kernels whose resources are given per
    (BLOCK_B, num_warps); records each compilation."""

    def __init__(self, resources: dict):
        self.resources, self.compiled = resources, []

    def warmup(self, grid, **kwargs):
        key = (kwargs["BLOCK_B"], kwargs["num_warps"])
        self.compiled.append(key)
        regs, shared, spills = self.resources[key]

        def init_handles():
            if shared > HOPPER.shared_memory_per_block_optin:
                raise OutOfResources(shared, HOPPER.shared_memory_per_block_optin, "shared memory")
        return SimpleNamespace(n_regs=regs, n_spills=spills, _init_handles=init_handles,
                               metadata=SimpleNamespace(num_warps=key[1], shared=shared))


def test_choose_plan_skips_what_the_device_cannot_hold_and_caches(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: HOPPER)
    monkeypatch.setattr(persistent_tiles, "_CHOSEN", {})
    kernel = StandInKernel({
        (16, 4): (255, 99328, 64),    # fits, but spills
        (16, 8): (255, 263168, 0),    # too much shared memory: OutOfResources when loaded
        (32, 4): (255, 99328, 0),     # fits, no spills: taken
        (32, 8): (190, 83456, 0),     # never compiled: an earlier candidate was taken
        (64, 4): (255, 99328, 0), (64, 8): (255, 99328, 0),
    })
    plans = persistent_plans(64, 512)
    args = {"T": 512, "B": 64, "H": 512, "SAVE": True, "y_ptr": torch.empty(1, dtype=torch.bfloat16)}
    chosen = choose_plan("k", kernel, plans, (64, 512, 1), torch.device("cpu"), args)
    assert (chosen.block_b, chosen.num_warps) == (32, 4)
    assert kernel.compiled == [(16, 4), (16, 8), (32, 4)]
    again = choose_plan("k", kernel, plans, (64, 512, 1), torch.device("cpu"), dict(args))
    assert again == chosen and len(kernel.compiled) == 3  # cached: nothing compiled again
    # A different launch key (another batch size) chooses afresh.
    choose_plan("k", kernel, plans, (64, 512, 1), torch.device("cpu"), dict(args, B=48))
    assert len(kernel.compiled) == 6


def test_choose_plan_none_when_the_grid_cannot_be_co_resident(monkeypatch):
    """B=256, H=1024 at 16 rows per program is 64 x 16 = 1024 programs: more than 132 SMs hold at
    one program each; 64 rows per program (256 programs) would need two per SM."""
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: HOPPER)
    monkeypatch.setattr(persistent_tiles, "_CHOSEN", {})
    kernel = StandInKernel({(b, w): (255, 165376, 0) for b in (16, 32, 64) for w in (4, 8)})
    plans = persistent_plans(256, 1024)
    assert choose_plan("k", kernel, plans, (256, 1024, 1), torch.device("cpu"), {"B": 256}) is None
    assert len(kernel.compiled) == len(plans) == 6
    # Bidirectional at B=16: 64 columns x 2 directions = 128 programs, one per SM: fits.
    small = persistent_plans(16, 1024)
    chosen = choose_plan("k", kernel, small, (16, 1024, 2), torch.device("cpu"), {"B": 16})
    assert chosen == PersistentPlan(16, 16, 1024, 4)
