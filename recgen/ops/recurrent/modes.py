"""Which kernel mode a recurrence launch runs in.

Modes
- resident: the recurrent weights (all gate blocks of W_hh, and W_hr for a projected LSTM) are
  loaded once, before the time loop, and stay on chip for the whole sequence.
- streamed: weight tiles are read from global memory (L2) inside every step; correct for any
  hidden size, slower.
- persistent (forward and backward of the LSTM without projection, the GRU and the Elman RNN;
  each cell's `*_persistent` launcher): the gate columns are split across co-resident programs,
  each holding its slice of W_hh for the whole sequence and exchanging h_t through L2 with a
  grid-wide barrier per step.

Rule: the launcher offers its single-program candidates (recgen.ops.common.tiling's
recurrence_candidates: resident while the padded weights fit an SM's register file, then
streamed) and the first whose compiled kernel spills no registers runs (failing all, the least
spilling). With RECGEN_PERSISTENT=1 (opt-in until the mode has been run on a GPU), where the
cell has a persistent kernel and no resident candidate compiles spill-free, the launcher tries
its persistent launcher instead, which picks its tiles from the compiled candidates and declines
(returns None) when none fits the device at once: the single-program choice then runs. Under
the interpreter the first candidate runs, and the persistent mode only when forced
(tiling.forced_tiles(mode=...)), one launch per step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from recgen.backend import interpreting
from recgen.ops.common.tiling import choose_spilling, forced, persistent_plans, recurrence_candidates


@dataclass(frozen=True)
class RecurrenceConfig:
    candidates: tuple         # single-program Tiles, preferred first
    persistent: tuple = None  # the persistent mode's candidate plans (tiling.persistent_plans), or None


def persistent_enabled() -> bool:
    return os.environ.get("RECGEN_PERSISTENT", "0") == "1" and not interpreting()


def recurrence_config(gates: int, hidden: int, width: int, dtype: torch.dtype,
                      has_proj: bool = False, *, batch: int = 1,
                      persistent_capable: bool = False) -> RecurrenceConfig:
    """The candidates of a cell with `gates` gate blocks, hidden size H and recurrent width P (the
    rule in the module docstring). persistent_capable: the cell has a persistent launcher for this
    case (the LSTM without projection, the GRU, the Elman RNN)."""
    mode = forced("mode")
    if mode is None and persistent_capable and persistent_enabled():
        mode = "persistent"
    if mode == "persistent" and persistent_capable:
        return RecurrenceConfig(recurrence_candidates(gates, hidden, width, dtype, has_proj),
                                persistent_plans(batch, hidden, forced("groups"), forced("columns")))
    single = None if mode == "persistent" else mode
    return RecurrenceConfig(recurrence_candidates(gates, hidden, width, dtype, has_proj, single,
                                                  forced("stream_block")))


def choose_mode(name: str, kernel, cfg: RecurrenceConfig, args: dict) -> tuple:
    """(the single-program Tiles for a launch of `kernel` with `args`, whether to try the
    persistent launcher first): it is tried when forced, or when enabled and no resident
    candidate compiles spill-free."""
    tiles, spilled = choose_spilling(name, kernel, cfg.candidates, args)
    try_persistent = cfg.persistent is not None and (
        forced("mode") == "persistent" or not (tiles.mode == "resident" and spilled == 0))
    return tiles, try_persistent

