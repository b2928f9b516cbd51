"""Off the GPU a converted model costs what the torch.nn model cost: recgen's modules against
torch.nn's on the CPU, forward and forward + backward.

    python bench/cpu_parity.py --out bench/results/cpu-parity_DATE [--rounds 30] [--quick]

`auto` runs torch's native op where the kernels do not run (here: CPU tensors without
TRITON_INTERPRET), so the ratio measures recgen's dispatch overhead on top of torch's op. The
torch module and its converted copy (same weights) are timed alternately, in changing order,
after a warm-up; each round is one call (cells: a loop of STEPS steps); medians are reported
with the device, versions and date. The target is ratio <= 1.1 for every module and pass; a
miss is reported as missed, with its ratio. No test asserts these times.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import recgen  # noqa: E402
from recgen.tools.benchmark import _BasicBlock, _ResnetBlock  # noqa: E402  (torchvision / CycleGAN forms)

TARGET = 1.1
CELL_STEPS = 50


class TorchResidualBlock(nn.Module):
    """recgen.nn.ResidualBlock's function written with torch modules only: the baseline a user
    of ResidualBlock would otherwise write."""

    def __init__(self, block: recgen.nn.ResidualBlock):
        super().__init__()
        self.conv1, self.norm1, self.conv2, self.norm2 = block.conv1, block.norm1, block.conv2, block.norm2

    def forward(self, x):
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(x + self.norm2(self.conv2(h)))


class CellLoop(nn.Module):
    """A cell run over STEPS inputs, as a row-by-row generator calls it."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, xs):
        h, out = None, []
        for x in xs:
            h = self.cell(x, h)
            out.append(h[0] if isinstance(h, tuple) else h)
        return torch.stack(out)


def cases(quick: bool):
    """(name, torch module, input) per module; sizes of a small generator's layers."""
    B, T, I, H = 16, 100, 128, 256
    if quick:
        B, T, I, H = 4, 10, 16, 32
    seq = lambda: torch.randn(T, B, I)  # noqa: E731
    rows = lambda: torch.randn(CELL_STEPS if not quick else 5, B, I)  # noqa: E731
    image = lambda c: torch.randn(8 if not quick else 2, c, 32 if not quick else 8, 32 if not quick else 8)  # noqa: E731
    C = 64 if not quick else 4
    block = recgen.nn.ResidualBlock(C, norm="batch")
    return [
        ("LSTM 2 layers", nn.LSTM(I, H, num_layers=2), seq),
        ("GRU 2 layers", nn.GRU(I, H, num_layers=2), seq),
        ("RNN tanh 2 layers", nn.RNN(I, H, num_layers=2), seq),
        ("LSTMCell", CellLoop(nn.LSTMCell(I, H)), rows),
        ("GRUCell", CellLoop(nn.GRUCell(I, H)), rows),
        ("RNNCell", CellLoop(nn.RNNCell(I, H)), rows),
        ("BasicBlock (torchvision)", _BasicBlock(C), lambda: image(C)),
        ("ResnetBlock (CycleGAN)", _ResnetBlock(C), lambda: image(C)),
        ("ResidualBlock", (TorchResidualBlock(block), block), lambda: image(C)),
    ]


def step(module, x, pass_):
    if pass_ == "fwd":
        with torch.no_grad():
            module(x)
        return
    out = module(x)
    out = out[0] if isinstance(out, tuple) else out
    out.sum().backward()


def timed(module, x, pass_):
    start = time.perf_counter()
    step(module, x, pass_)
    return (time.perf_counter() - start) * 1e3


def measure(name, pair, make_input, pass_, rounds, warmup):
    torch.manual_seed(0)
    if isinstance(pair, tuple):
        theirs, ours = pair
    else:
        theirs = pair
        ours = recgen.convert(copy.deepcopy(pair))
    x = make_input()
    if pass_ == "fwdbwd":
        x.requires_grad_()
    for _ in range(warmup):
        step(theirs, x, pass_)
        step(ours, x, pass_)
    ran = {recgen.backend.implementation_of(m) for m in ours.modules()} - {None}
    if ran != {"torch"}:
        raise RuntimeError(f"{name}: recgen ran {ran}, expected torch's op (is TRITON_INTERPRET set?)")
    times = {"torch": [], "recgen": []}
    for r in range(rounds):
        order = (("torch", theirs), ("recgen", ours)) if r % 2 == 0 else (("recgen", ours), ("torch", theirs))
        for label, module in order:
            times[label].append(timed(module, x, pass_))
    t, g = statistics.median(times["torch"]), statistics.median(times["recgen"])
    return {"module": name, "pass": pass_, "torch_ms": t, "recgen_ms": g, "ratio": g / t,
            "recgen_implementation": "torch", "within_target": g / t <= TARGET}


def to_markdown(report) -> str:
    env = report["environment"]
    lines = [f"# recgen vs torch.nn on the CPU ({env['date']})", "",
             f"{env['cpu']}, {env['threads']} threads; torch {env['torch']}, Python {env['python']}; "
             f"medians of {report['rounds']} alternated rounds after {report['warmup']} warm-up calls; "
             f"recgen's backend `auto` ran torch's native op (the `torch` implementation).", "",
             "| module | pass | torch.nn ms | recgen ms | ratio (recgen / torch) | within 1.1x |",
             "|---|---|---:|---:|---:|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['module']} | {row['pass']} | {row['torch_ms']:.3f} | {row['recgen_ms']:.3f} | "
                     f"{row['ratio']:.3f} | {'yes' if row['within_target'] else 'MISSED'} |")
    missed = [r for r in report["rows"] if not r["within_target"]]
    lines += ["", "All within 1.1x." if not missed else
              "Missed: " + "; ".join(f"{r['module']} {r['pass']} x{r['ratio']:.3f}" for r in missed)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for cpu_parity.json and cpu_parity.md")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: this benchmark times what a CPU user runs")
    rows = []
    for name, pair, make_input in cases(args.quick):
        for pass_ in ("fwd", "fwdbwd"):
            row = measure(name, pair, make_input, pass_, args.rounds, args.warmup)
            print(f"{name:26s} {pass_:7s} torch {row['torch_ms']:9.3f} ms  recgen {row['recgen_ms']:9.3f} ms  "
                  f"x{row['ratio']:.3f}", flush=True)
            rows.append(row)
    report = {"environment": {"device": "cpu", "cpu": platform.processor() or platform.machine(),
                              "threads": torch.get_num_threads(), "torch": torch.__version__,
                              "python": platform.python_version(), "recgen": recgen.__version__,
                              "date": datetime.date.today().isoformat()},
              "rounds": args.rounds, "warmup": args.warmup, "target_ratio": TARGET, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_parity.json").write_text(json.dumps(report, indent=2))
    (out / "cpu_parity.md").write_text(to_markdown(report))
    print(f"wrote {out / 'cpu_parity.json'} and {out / 'cpu_parity.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
