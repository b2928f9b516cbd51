"""recgen.ops.common.tiling: the rule that picks a launch's tiles from the compiled candidates."""

import pytest
import torch

from recgen.ops.common.tiling import RESIDENT_LIMIT_BYTES, recurrence_candidates
from recgen.ops.common.tiling import DEFAULT_STAGES, Tiles, padded, pick, tile_candidates, warps_stages


def _resources(spilled):
    return None if spilled is None else {"spilled_bytes": spilled, "registers": 255, "shared_bytes": 0,
                                         "num_warps": 4}


def _candidates(n):
    return tuple(Tiles.of("streamed", BLOCK_H=16 * (i + 1), num_warps=4, num_stages=DEFAULT_STAGES) for i in range(n))


@pytest.mark.parametrize("spills, chosen, compiled", [
    ([0, 0, 0], 0, 1),           # the first spill-free one, and nothing after it is compiled
    ([40, 0, 0], 1, 2),          # a spilling candidate is passed over
    ([40, 8, 16], 1, 3),         # none spill-free: the least spilling
    ([8, 8, 16], 0, 3),          # ... the first of equals
    ([None, 24, None], 1, 3),    # one the device cannot load is out
])
def test_pick_takes_the_first_spill_free_else_the_least_spilling(spills, chosen, compiled):
    candidates = _candidates(len(spills))
    asked = []

    def resources_of(candidate):
        asked.append(candidate)
        return _resources(spills[candidates.index(candidate)])

    best, tried = pick(candidates, resources_of)
    assert best == candidates[chosen]
    assert len(asked) == len(tried) == compiled


def test_pick_raises_when_no_candidate_loads():
    with pytest.raises(RuntimeError, match="no candidate tiles load"):
        pick(_candidates(2), lambda candidate: None)


def test_warps_and_stages_keep_the_rules_own_warps_first():
    assert warps_stages(4) == ((4, DEFAULT_STAGES), (8, DEFAULT_STAGES), (4, 1), (8, 1))
    assert warps_stages(8) == ((8, DEFAULT_STAGES), (4, DEFAULT_STAGES), (8, 1), (4, 1))
    tiles = tile_candidates("conv", 8, BLOCK_M=128)
    assert [(t["num_warps"], t["num_stages"]) for t in tiles] == list(warps_stages(8))
    assert all(t["BLOCK_M"] == 128 for t in tiles)


@pytest.mark.parametrize("n, cap, block", [(0, None, 16), (1, None, 16), (16, None, 16), (17, None, 32),
                                           (100, 64, 64), (20, 64, 32)])
def test_padded_block_sizes(n, cap, block):
    assert padded(n, cap) == block


def test_recurrence_candidates_resident_first_while_the_weights_fit_an_sm():
    small = recurrence_candidates(4, 13, 13, torch.float32)
    assert [c.mode for c in small[:4]] == ["resident"] * 4 and small[4].mode == "streamed"
    assert small[0]["BLOCK_H"] == small[0]["BLOCK_P"] == 16
    # 4 gates x 256 x 256 float32 = 1 MiB: more than an SM's registers, so no resident candidate
    assert 4 * 256 * 256 * 4 > RESIDENT_LIMIT_BYTES
    large = recurrence_candidates(4, 160, 160, torch.float32)
    assert {c.mode for c in large} == {"streamed"}
    assert [c["BLOCK_H"] for c in large] == [64] * 4 + [32] * 4 + [16] * 4
    assert recurrence_candidates(4, 160, 160, torch.float32, mode="streamed", block=32) == large[4:8]
