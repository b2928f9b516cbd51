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

Rule (recgen/ops/tiles.py): the launcher offers its single-program candidates in order of
preference, resident before streamed, each at (warps, stages) in tiles.WARPS_STAGES order, and
runs the first whose compiled kernel spills no registers (failing all, the least spilling). A
resident candidate is offered only while the padded weights fit the register file of one SM
(RESIDENT_LIMIT_BYTES: no program can hold more on chip; below it the compiler decides).
Streamed tiles are offered 64 wide, then 32 and 16. With RECGEN_PERSISTENT=1 (opt-in until the
mode has been run on a GPU), where the launcher has a persistent kernel and no resident
candidate compiles spill-free, the persistent mode is tried instead (run_recurrence): its
launcher picks its tiles from the compiled candidates, checking that the device holds the whole
grid at once, and the single-program choice runs if none fits (recgen/ops/persistent_tiles.py). Under the interpreter the first candidate runs, and the
persistent mode only when forced (tests), one launch per step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from recgen.backend import interpreting
from recgen.ops._launch import check_power_of_two, launch, overriding
from recgen.ops.recurrence import BATCH_ROWS
from recgen.ops.tiles import MIN_DOT, WARPS_STAGES, Tiles, choose_spilling, padded, unique

# An SM's register file (64K 32-bit registers on sm_80/sm_90): weights beyond it cannot stay on
# chip in one program, so resident tiles are not even compiled for them.
RESIDENT_LIMIT_BYTES = 65536 * 4
STREAM_BLOCKS = (64, 32, 16)
MODES = ("resident", "streamed", "persistent")

_forced: dict = {"mode": None, "block": None, "groups": 0, "columns": 0}


@dataclass(frozen=True)
class RecurrenceConfig:
    candidates: tuple         # single-program Tiles (recgen.ops.tiles), preferred first
    persistent: tuple = None  # the persistent mode's candidate tiles (persistent_tiles.persistent_plans)


def persistent_enabled() -> bool:
    return os.environ.get("RECGEN_PERSISTENT", "0") == "1" and not interpreting()


def recurrence_candidates(gates: int, hidden: int, width: int, dtype: torch.dtype, has_proj: bool = False,
                          mode: str | None = None, block: int | None = None) -> tuple:
    """The single-program tiles for a cell with `gates` gate blocks, hidden size H and recurrent
    width P, preferred first (the rule in the module docstring); `mode` and `block` keep only
    the resident or the streamed ones, of that width."""
    h_pad, p_pad = padded(hidden), padded(width)
    elem = torch.finfo(dtype).bits // 8
    weight_bytes = gates * h_pad * p_pad * elem + (h_pad * p_pad * elem if has_proj else 0)
    resident = [Tiles.of("resident", RESIDENT=True, BLOCK_B=BATCH_ROWS, BLOCK_H=h_pad, BLOCK_P=p_pad,
                         num_warps=warps, num_stages=stages) for warps, stages in WARPS_STAGES]
    streamed = [Tiles.of("streamed", RESIDENT=False, BLOCK_B=BATCH_ROWS, BLOCK_H=min(b, h_pad), BLOCK_P=min(b, p_pad),
                         num_warps=warps, num_stages=stages)
                for b in ((block,) if block else STREAM_BLOCKS) for warps, stages in WARPS_STAGES]
    if mode == "resident":
        return unique(resident)
    if mode == "streamed":
        return unique(streamed)
    return unique((resident if weight_bytes <= RESIDENT_LIMIT_BYTES else []) + streamed)


def recurrence_config(gates: int, hidden: int, width: int, dtype: torch.dtype,
                      has_proj: bool = False, *, batch: int = 1,
                      persistent_capable: bool = False) -> RecurrenceConfig:
    """Mode candidates for a cell with `gates` gate blocks, hidden size H and recurrent width P
    (the rule in the module docstring). persistent_capable: the caller has a persistent
    launcher for this case (the LSTM without projection, the GRU, the Elman RNN)."""
    mode = _forced["mode"]
    if mode is None and persistent_capable and persistent_enabled():
        mode = "persistent"
    if mode == "persistent" and persistent_capable:
        from recgen.ops.persistent_tiles import persistent_plans
        return RecurrenceConfig(recurrence_candidates(gates, hidden, width, dtype, has_proj),
                                persistent_plans(batch, hidden, _forced["groups"], _forced["columns"]))
    single = None if mode == "persistent" else mode
    return RecurrenceConfig(recurrence_candidates(gates, hidden, width, dtype, has_proj, single, _forced["block"]))


def run_recurrence(name: str, kernel, cfg: RecurrenceConfig, grid: tuple, prepare, persistent):
    """Launch a recurrence in the mode the rule picks: `prepare()` allocates the single-program
    kernel's outputs and returns its launch arguments (tiles aside); `persistent(plans)` runs the
    persistent launcher, returning its outputs, or None when no plan fits the device. The
    persistent mode is tried when forced, or when enabled and no resident candidate compiles
    spill-free. Returns (persistent outputs, None) or (None, the single-program arguments, whose
    tensors hold its outputs)."""
    args = prepare()
    tiles, spilled = choose_spilling(name, kernel, cfg.candidates, args)
    if cfg.persistent is not None and (_forced["mode"] == "persistent"
                                       or not (tiles.mode == "resident" and spilled == 0)):
        args = None  # released before the persistent launcher allocates its own outputs
        out = persistent(cfg.persistent)
        if out is not None:
            return out, None
        args = prepare()
    launch(name, kernel, grid, **args, **tiles.args())
    return None, args


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
