"""Registers, spills, shared memory and occupancy of the persistent recurrence kernels on Hopper,
measured without a GPU: each kernel is compiled for sm_90 by Triton's own compiler (ptxas
included) and its cubin's resource usage is read with cuobjdump (recgen/tools/aot_compile.py).

The persistent mode needs every program of a barrier group resident at once, so these numbers
decide which tiles (BLOCK_B batch rows, warps) can run at all, and whether the W_hh slice a
program holds spills to local memory. They are compile-time facts for the Triton version
installed here (printed); the GPU machine's Triton may allocate differently, and the launcher
re-checks the compiled kernel there.

    python bench/kernel_resources.py [--kernel lstm_fwd] [--dtype bf16] [--hidden 512] [--columns 8]
        [--previous DIR/kernel-resources-sm90.json ...] --out DIR

--previous reuses the rows of an earlier run (compiling only the tiles it lacks), so the rule's
choices can be recomputed over all candidates after probing a few new ones.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import itertools
import json
import multiprocessing
import os
import sys

from recgen.ops.common.tiling import BLOCK_B_CHOICES, COLUMN_CHOICES, WARP_CHOICES
from recgen.tools.grids import RECURRENT_GRID

KERNELS = {  # name: (module, function)
    "lstm_fwd": ("recurrent.lstm_persistent", "_lstm_fwd_persistent_kernel"),
    "lstm_bwd": ("recurrent.lstm_persistent", "_lstm_bwd_persistent_kernel"),
    "gru_fwd": ("recurrent.gru_persistent", "_gru_fwd_persistent_kernel"),
    "gru_bwd": ("recurrent.gru_persistent", "_gru_bwd_persistent_kernel"),
    "rnn_fwd": ("recurrent.rnn_persistent", "_rnn_fwd_persistent_kernel"),
    "rnn_bwd": ("recurrent.rnn_persistent", "_rnn_bwd_persistent_kernel"),
}
HIDDEN = RECURRENT_GRID["H"]
BLOCK_B, WARPS, COLUMNS = BLOCK_B_CHOICES, WARP_CHOICES, COLUMN_CHOICES  # the persistent candidates
# tf32: float32 tensors with TF32 dots, what float32 layers run under torch's default flags
# (recgen.ops.common.launch.torch_allows_tf32); fp32: full float32 dots (TF32 off).
DTYPES = ("bf16", "fp32", "tf32")
GRID_BATCH = RECURRENT_GRID["B"]


def _measure(job: tuple) -> dict:
    """One compile in a worker process (never under the interpreter): the job's resource row."""
    kernel, dtype, hidden, block_b, warps, columns = job
    import importlib

    from recgen.ops.common.tiling import PIPELINE_STAGES
    from recgen.ops.recurrent.persistent import STATE_POINTERS
    from recgen.tools.aot_compile import compile_kernel, resource_usage

    module, name = KERNELS[kernel]
    fn = getattr(importlib.import_module(f"recgen.kernels.{module}"), name)
    fp32 = dtype in ("fp32", "tf32")
    values = dict(HAS_LENGTHS=False, SAVE=True, GRID_SYNC=True, PHASES=3, HAS_BIAS=True, RELU=False,
                  DOT_FP32=fp32, INPUT_PRECISION="tf32" if dtype == "tf32" else "ieee",
                  BLOCK_B=block_b, BLOCK_H=columns, BLOCK_P=hidden)
    compiled = compile_kernel(fn, values, "fp32" if fp32 else dtype, num_warps=warps, num_stages=PIPELINE_STAGES,
                              state_pointers=STATE_POINTERS)
    return {"kernel": kernel, "dtype": dtype, "H": hidden, "block_b": block_b, "block_h": columns,
            **resource_usage(compiled)}


def _tiles_key(row: dict) -> tuple:
    """A row's compile key; rows of runs before the column choice had 16 columns."""
    return row["kernel"], row["dtype"], row["H"], row["block_b"], row["num_warps"], row.get("block_h", 16)


def _with_occupancy(row: dict) -> dict:
    from recgen.ops.common.tiling import SM90_LIMITS
    from recgen.ops.recurrent.persistent import occupancy

    return dict(row, programs_per_sm=occupancy(row["registers"], row["num_warps"], row["shared_bytes"], SM90_LIMITS))


def _fit(row: dict, plan, batch: int):
    """What the launcher's fit gives on an H200 from a probe row: (spilled bytes, plan with groups)."""
    from recgen.ops.common.tiling import SM90_LIMITS
    from recgen.ops.recurrent.persistent import fitted

    plan = fitted(plan, batch, row["H"], 1, row["programs_per_sm"], SM90_LIMITS["sms_h200"])
    return None if plan is None else (row["stack_bytes"], plan)


def rule_choices(rows: list) -> list:
    """What the launcher's rule (recgen.ops.recurrent.persistent.pick_plan) would choose on an H200 from
    these compile-time numbers, per (kernel, dtype, H, B) of the grid, one direction: the
    candidates in the launcher's order, each with the groups that fit, ranked by spilled bytes
    (the stack) and then rows per program and step."""
    from recgen.ops.common.tiling import persistent_plans
    from recgen.ops.recurrent.persistent import pick_plan

    by_tiles = {_tiles_key(r): r for r in rows}
    choices = []
    for kernel, dtype, hidden in sorted({(r["kernel"], r["dtype"], r["H"]) for r in rows}):
        for batch in GRID_BATCH:
            def fit(plan):
                row = by_tiles.get((kernel, dtype, hidden, plan.block_b, plan.num_warps, plan.block_h))
                if row is None:
                    raise LookupError(plan)
                return _fit(row, plan, batch)
            try:
                plan = pick_plan(persistent_plans(batch, hidden), fit, batch)
                choice = "streamed" if plan is None else \
                    (f"{plan.block_b} rows x {plan.rows_per_step(batch) // plan.block_b} tiles, "
                     f"{plan.block_h} columns, {plan.num_warps} warps")
            except LookupError as missing:  # a probe run restricted to some tiles
                plan, choice = None, f"not known: tiles {missing.args[0]} not compiled in this run"
            row = None if plan is None else \
                by_tiles[(kernel, dtype, hidden, plan.block_b, plan.num_warps, plan.block_h)]
            choices.append({"kernel": kernel, "dtype": dtype, "H": hidden, "B": batch, "choice": choice,
                            "block_h": None if plan is None else plan.block_h,
                            "groups": None if plan is None else plan.groups,
                            "rows_per_step": None if plan is None else plan.rows_per_step(batch),
                            "stack_bytes": None if row is None else row["stack_bytes"],
                            "shared_bytes": None if row is None else row["shared_bytes"],
                            "programs_per_sm": None if row is None else row["programs_per_sm"]})
    return choices


def to_markdown(report: dict) -> str:
    lines = [f"Compiled for sm_90 without a GPU, Triton {report['triton']}, {report['date']}.", "",
             "| kernel | dtype | H | B | rule's choice | rows/program/step | spilled bytes/thread | shared bytes "
             "| programs/SM |", "|---|---|---|---|---|---|---|---|---|"]
    for c in report["choices"]:
        lines.append(f"| {c['kernel']} | {c['dtype']} | {c['H']} | {c['B']} | {c['choice']} | "
                     f"{'' if c['rows_per_step'] is None else c['rows_per_step']} | "
                     f"{'' if c['stack_bytes'] is None else c['stack_bytes']} | "
                     f"{'' if c['shared_bytes'] is None else c['shared_bytes']} | "
                     f"{'' if c['programs_per_sm'] is None else c['programs_per_sm']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", action="append", choices=sorted(KERNELS))
    parser.add_argument("--dtype", action="append", choices=DTYPES)
    parser.add_argument("--hidden", action="append", type=int)
    parser.add_argument("--block-b", action="append", type=int)
    parser.add_argument("--warps", action="append", type=int)
    parser.add_argument("--columns", action="append", type=int, help="hidden units per program")
    parser.add_argument("--previous", action="append",
                        help="an earlier run's JSON (repeatable): its rows are reused, not compiled again")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", help="folder for kernel-resources-sm90.json")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # workers compile for the GPU target
    rows = []
    for previous in args.previous or ():
        with open(previous) as f:
            # occupancy recomputed: the compile facts are kept, the occupancy rule may have changed
            rows += [_with_occupancy(dict(r, block_h=r.get("block_h", 16))) for r in json.load(f)["rows"]]
    known = {_tiles_key(r) for r in rows}
    jobs = [job for job in itertools.product(args.kernel or sorted(KERNELS), args.dtype or DTYPES,
                                             args.hidden or HIDDEN, args.block_b or BLOCK_B, args.warps or WARPS,
                                             args.columns or COLUMNS)
            if job not in known]
    import triton
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for row in pool.map(_measure, jobs):
            rows.append(_with_occupancy(row))
            print(_line(rows[-1]), flush=True)
    rows.sort(key=_tiles_key)  # one order whatever was reused or compiled: stable files
    report = {"target": "sm_90 (Hopper), compiled without a GPU", "triton": triton.__version__,
              "date": datetime.date.today().isoformat(), "rows": rows, "choices": rule_choices(rows)}
    print(to_markdown(report))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for name, text in (("kernel-resources-sm90.json", json.dumps(report, indent=1)),
                           ("kernel-resources-sm90.md", to_markdown(report))):
            with open(os.path.join(args.out, name), "w") as f:
                f.write(text)
            print(f"wrote {os.path.join(args.out, name)}")
    return 0


def _line(row: dict) -> str:
    return (f"{row['kernel']:9s} {row['dtype']:4s} H={row['H']:<5d} block_b={row['block_b']:<3d} "
            f"columns={row['block_h']:<2d} "
            f"warps={row['num_warps']} regs={row['registers']:<3d} stack={row['stack_bytes']:<5d} "
            f"shared={row['shared_bytes']:<7d} per_sm={row['programs_per_sm']}")


if __name__ == "__main__":
    sys.exit(main())
