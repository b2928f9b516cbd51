"""Peak GPU memory of one forward + backward, recgen against cuDNN (torch.nn), per grid point.

    python bench/memory_usage.py --out bench/results/<device>-<date>   # needs CUDA

Measured as torch.cuda.max_memory_allocated() above the memory held before the step (inputs
and weights), after a warm-up step, so it counts activations saved for the backward, the
kernels' scratch and the gradients. Writes memory.json and memory.md to --out.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os

import torch

import recgen

GRID = [  # (cell, T, B, H, dtype)
    ("LSTM", 512, 16, 256, torch.bfloat16), ("LSTM", 512, 64, 512, torch.bfloat16),
    ("LSTM", 512, 64, 1024, torch.bfloat16), ("GRU", 512, 64, 512, torch.bfloat16),
    ("RNN", 512, 64, 512, torch.bfloat16), ("LSTM", 512, 64, 512, torch.float32),
]


def step_peak_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Peak bytes allocated by one forward + backward beyond what was held before it."""
    def step():
        y, _ = module(x)
        y.float().square().sum().backward()
    step()  # warm-up: kernels compiled, cuDNN workspaces chosen
    module.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    module.zero_grad(set_to_none=True)
    return peak


def measure(cell, T, B, H, dtype) -> dict:
    torch.manual_seed(0)
    ref = getattr(torch.nn, cell)(H, H).to("cuda", dtype)
    rec = recgen.convert(copy.deepcopy(ref))
    x = torch.randn(T, B, H, device="cuda", dtype=dtype, requires_grad=True)
    row = {"cell": cell, "T": T, "B": B, "H": H, "dtype": str(dtype).replace("torch.", "")}
    row["cudnn_mib"] = step_peak_bytes(ref, x) / 2**20
    row["recgen_mib"] = step_peak_bytes(rec, x) / 2**20
    row["ratio"] = row["recgen_mib"] / row["cudnn_mib"]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("memory_usage.py needs a CUDA device")
    rows = [measure(*point) for point in GRID]
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "date": datetime.date.today().isoformat()}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "memory.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = [f"Peak memory of one forward+backward above inputs and weights ({meta['device']}, torch "
             f"{meta['torch']}, triton {meta['triton']}, {meta['date']}):", "",
             "| cell | T | B | H | dtype | cuDNN MiB | recgen MiB | recgen / cuDNN |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['cell']} | {r['T']} | {r['B']} | {r['H']} | {r['dtype']} | {r['cudnn_mib']:.1f} | "
              f"{r['recgen_mib']:.1f} | {r['ratio']:.2f} |" for r in rows]
    with open(os.path.join(args.out, "memory.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
