"""How a recurrence is launched: the one place where the kernel mode and block sizes are chosen.

Modes
- resident: the recurrent weights (all gate blocks of W_hh, and W_hr for a projected LSTM) are
  loaded once, before the time loop, and stay on chip for the whole sequence.
- streamed: weight tiles are read from global memory (L2) inside every step; correct for any
  hidden size, slower. Making large hidden sizes fast is the persistent multi-program mode's job.

Rule: resident when the padded weights held by one program fit RESIDENT_BUDGET_BYTES (what one
program can keep in registers and shared memory without spilling), streamed otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from recgen.ops._launch import check_power_of_two, overriding

RESIDENT_BUDGET_BYTES = 64 * 1024
STREAM_BLOCK = 64
MIN_DOT = 16  # tl.dot needs at least 16 rows and columns
MODES = ("resident", "streamed")

_forced: dict = {"mode": None, "block": None}


@dataclass(frozen=True)
class RecurrenceConfig:
    resident: bool
    block_b: int   # batch rows per program (padded to tl.dot's minimum)
    block_h: int   # hidden columns per tile (all of H when resident)
    block_p: int   # recurrent-width columns per tile (all of P when resident)
    num_warps: int


def _pow2(n: int) -> int:
    return max(MIN_DOT, triton.next_power_of_2(n))


def recurrence_config(gates: int, hidden: int, width: int, dtype: torch.dtype,
                      has_proj: bool = False) -> RecurrenceConfig:
    """Pick mode and tiles for a cell with `gates` gate blocks, hidden size H and recurrent width P."""
    h_pad, p_pad = _pow2(hidden), _pow2(width)
    elem = torch.finfo(dtype).bits // 8
    weight_bytes = gates * h_pad * p_pad * elem + (h_pad * p_pad * elem if has_proj else 0)
    mode = _forced["mode"] or ("resident" if weight_bytes <= RESIDENT_BUDGET_BYTES else "streamed")
    if mode == "resident":
        return RecurrenceConfig(True, MIN_DOT, h_pad, p_pad, num_warps=4)
    block = _forced["block"] or STREAM_BLOCK
    return RecurrenceConfig(False, MIN_DOT, min(block, h_pad), min(block, p_pad), num_warps=4)


def forced_mode(mode: str, block: int | None = None):
    """Force a mode (and streamed tile size) for every launch in a with block; tests and bench."""
    if mode not in MODES:
        raise ValueError(f"unknown recurrence mode {mode!r}; expected one of {MODES}")
    check_power_of_two("block", block, MIN_DOT)
    return overriding(_forced, mode=mode, block=block)
