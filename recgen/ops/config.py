"""How a recurrence is launched: the one place where the kernel mode and block sizes are chosen.

Modes
- resident: the recurrent weights (all gate blocks of W_hh, and W_hr for a projected LSTM) are
  loaded once, before the time loop, and stay on chip for the whole sequence.
- streamed: weight tiles are read from global memory (L2) inside every step; correct for any
  hidden size, slower.
- persistent (forward and backward of the LSTM without projection, the GRU and the Elman RNN,
  recgen/ops/persistent.py): the gate columns are split across co-resident programs, each
  holding its slice of W_hh for the whole sequence and exchanging h_t through L2 with a
  grid-wide barrier per step.

Rule: resident when the padded weights held by one program fit RESIDENT_BUDGET_BYTES (what one
program can keep in registers and shared memory without spilling). Otherwise persistent where
the launcher supports it and RECGEN_PERSISTENT=1 is set (opt-in until the mode has been run on
a GPU; the launcher then picks its tiles from the compiled candidates, checking that the device
holds the whole grid at once, and streams if no candidate fits: recgen/ops/persistent_tiles.py);
streamed otherwise. Under the interpreter the
persistent mode runs only when forced (tests), one launch per step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

from recgen.backend import interpreting
from recgen.ops._launch import check_power_of_two, overriding

RESIDENT_BUDGET_BYTES = 64 * 1024
STREAM_BLOCK = 64
MIN_DOT = 16  # tl.dot needs at least 16 rows and columns
MODES = ("resident", "streamed", "persistent")

_forced: dict = {"mode": None, "block": None, "groups": 0, "columns": 0}


@dataclass(frozen=True)
class RecurrenceConfig:
    resident: bool
    block_b: int   # batch rows per program (padded to tl.dot's minimum)
    block_h: int   # hidden columns per tile (all of H when resident)
    block_p: int   # recurrent-width columns per tile (all of P when resident)
    num_warps: int
    persistent: tuple = None  # the persistent mode's candidate tiles (persistent_tiles.persistent_plans)


def _pow2(n: int) -> int:
    return max(MIN_DOT, triton.next_power_of_2(n))


def persistent_enabled() -> bool:
    return os.environ.get("RECGEN_PERSISTENT", "0") == "1" and not interpreting()


def recurrence_config(gates: int, hidden: int, width: int, dtype: torch.dtype,
                      has_proj: bool = False, *, batch: int = 1,
                      persistent_capable: bool = False) -> RecurrenceConfig:
    """Pick mode and tiles for a cell with `gates` gate blocks, hidden size H and recurrent width
    P (the rule in the module docstring). persistent_capable: the caller has a persistent
    launcher for this case (the LSTM without projection, the GRU, the Elman RNN)."""
    h_pad, p_pad = _pow2(hidden), _pow2(width)
    elem = torch.finfo(dtype).bits // 8
    weight_bytes = gates * h_pad * p_pad * elem + (h_pad * p_pad * elem if has_proj else 0)
    if _forced["mode"]:
        mode = _forced["mode"]
    elif weight_bytes <= RESIDENT_BUDGET_BYTES:
        mode = "resident"
    else:
        mode = "persistent" if persistent_capable and persistent_enabled() else "streamed"
    if mode == "persistent" and persistent_capable:
        from recgen.ops.persistent_tiles import persistent_plans
        plans = persistent_plans(batch, hidden, _forced["groups"], _forced["columns"])
        first = plans[0]
        return RecurrenceConfig(False, first.block_b, first.block_h, first.block_p, first.num_warps, plans)
    if mode == "resident":
        return RecurrenceConfig(True, MIN_DOT, h_pad, p_pad, num_warps=4)
    block = _forced["block"] or STREAM_BLOCK
    return RecurrenceConfig(False, MIN_DOT, min(block, h_pad), min(block, p_pad), num_warps=4)


def persistent_or_config(run, gates: int, hidden: int, width: int, dtype: torch.dtype,
                         has_proj: bool = False, *, batch: int):
    """(run(plans), None) when the rule picks the persistent mode (which only the LSTM without
    projection, the GRU and the Elman RNN have) and run, the op's persistent launcher, finds a
    plan the device holds; otherwise (None, the single-program config: resident or streamed)."""
    cfg = recurrence_config(gates, hidden, width, dtype, has_proj, batch=batch, persistent_capable=not has_proj)
    if cfg.persistent is not None:
        out = run(cfg.persistent)
        if out is not None:
            return out, None
        cfg = recurrence_config(gates, hidden, width, dtype, has_proj)  # not co-resident: streamed
    return None, cfg


def forced_mode(mode: str, block: int | None = None, groups: int = 0, columns: int = 0):
    """Force a mode (and the streamed tile size, or at most `groups` persistent program groups per
    direction, or `columns` hidden units per persistent program) for every launch in a with
    block; tests and bench."""
    from recgen.ops.persistent_tiles import COLUMN_CHOICES

    if mode not in MODES:
        raise ValueError(f"unknown recurrence mode {mode!r}; expected one of {MODES}")
    check_power_of_two("block", block, MIN_DOT)
    if groups < 0:
        raise ValueError(f"groups must be >= 0, got {groups}")
    if columns and columns not in COLUMN_CHOICES:
        raise ValueError(f"columns must be 0 (the rule's choice) or one of {COLUMN_CHOICES}, got {columns}")
    return overriding(_forced, mode=mode, block=block, groups=groups, columns=columns)
