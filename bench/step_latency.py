"""Time per recurrence step where the step is latency-bound: the persistent mode (one launch, a
grid barrier per step) against recgen's single-program modes and cuDNN, at batch 1 and 16.

    python bench/step_latency.py --out DIR        # needs CUDA
    python bench/step_latency.py --smoke          # CPU: tiny sizes under the interpreter (plumbing only)

The speed issue's notes (docs/performance.md) assume about 2 µs per dependent round trip; this
measures it. Each row is an inference forward (no_grad) of one layer over T steps, timed by
recgen.tools.benchmark.time_step (warm-up first, CUDA synchronised, median of the rounds), divided by
T. A persistent row names the tiles the launcher chose (recgen/ops/recurrent/persistent.py), or says
that it fell back to the streamed kernel, as the launch counters show. Writes step-latency.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

CELLS = ("rnn_tanh", "gru", "lstm")
HIDDEN = (16, 64, 256, 512, 1024)  # 1 to 64 programs per barrier group in the persistent mode
BATCH = (1, 16)
MODES = ("persistent", "recgen-default", "cudnn")


def _modules(cell: str, hidden: int, device: str, dtype):
    import torch

    import recgen
    kind = {"rnn_tanh": "RNN", "gru": "GRU", "lstm": "LSTM"}[cell]
    ref = getattr(torch.nn, kind)(hidden, hidden).to(device, dtype)
    rec = getattr(recgen.nn, kind)(hidden, hidden).to(device, dtype)
    rec.load_state_dict(ref.state_dict())
    return ref, rec


def measure(cell: str, hidden: int, batch: int, steps: int, mode: str, device: str, dtype, rounds: int,
            warmup: int) -> dict:
    import torch

    from recgen.tools.benchmark import time_step
    from recgen.ops import LAUNCH_COUNTS
    from recgen.ops.recurrent import persistent
    from recgen.ops.common.tiling import forced_tiles

    cuda = device == "cuda"
    ref, rec = _modules(cell, hidden, device, dtype)
    x = torch.randn(steps, batch, hidden, device=device, dtype=dtype)
    module = ref if mode == "cudnn" else rec

    def step():
        with torch.no_grad():
            module(x)

    base = cell.split("_")[0]
    row = {"cell": cell, "H": hidden, "B": batch, "T": steps, "mode": mode, "plan": None, "note": ""}
    before = dict(LAUNCH_COUNTS)
    if mode == "persistent":
        with forced_tiles(mode="persistent"):
            ms, _ = time_step(step, rounds, warmup, cuda)
        ran = LAUNCH_COUNTS[f"{base}_fwd_persistent"] > before.get(f"{base}_fwd_persistent", 0)
        fell_back = LAUNCH_COUNTS[f"{base}_fwd"] > before.get(f"{base}_fwd", 0)
        if fell_back or not ran:
            row["note"] = "fell back to the streamed kernel: no candidate tiles fit the device at once"
        chosen = [plan for key, plan in persistent._CHOSEN.items()
                  if key[0] == f"{base}_fwd_persistent" and ("B", batch) in key[1] and ("H", hidden) in key[1]]
        if chosen and chosen[-1] is not None:
            row["plan"] = {"block_b": chosen[-1].block_b, "num_warps": chosen[-1].num_warps,
                           "programs": -(-hidden // chosen[-1].block_h) * -(-batch // chosen[-1].block_b)}
    else:
        ms, _ = time_step(step, rounds, warmup, cuda)
    row.update(ms=ms, us_per_step=ms * 1e3 / steps)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for step-latency.json")
    parser.add_argument("--steps", type=int, default=2048)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; runs on the CPU under the interpreter")
    args = parser.parse_args(argv)
    import torch
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("step_latency needs a CUDA device (or --smoke for the CPU plumbing check)", file=sys.stderr)
        return 2
    if not cuda:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
    from recgen.tools.benchmark import environment
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    hidden, batch, steps = (HIDDEN, BATCH, args.steps) if not args.smoke else ((16, 20), (1,), 3)
    rounds, warmup = (20, 3) if not args.smoke else (1, 0)
    rows = []
    for cell, h, b, mode in itertools.product(CELLS, hidden, batch, MODES):
        if mode == "cudnn" and not cuda:
            continue
        rows.append(measure(cell, h, b, steps, mode, device, dtype, rounds, warmup))
        r = rows[-1]
        plan = f" plan={r['plan']}" if r["plan"] else ""
        print(f"{cell:8s} H={h:<5d} B={b:<3d} {mode:15s} {r['us_per_step']:9.2f} us/step{plan} {r['note']}",
              flush=True)
    report = dict(environment(cuda), dtype=str(dtype).replace("torch.", ""), rows=rows)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "step-latency.json")
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
