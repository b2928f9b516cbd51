"""Forward+backward time of one recurrent layer: recgen vs torch.nn (cuDNN on a GPU).

    python bench/lstm_vs_cudnn.py                      # the core issue's case on the GPU
    python bench/lstm_vs_cudnn.py --cell gru --T 64 --B 16 --H 256 --dtype fp32
    python bench/lstm_vs_cudnn.py --quick              # tiny CPU smoke run (interpreter), no meaning as speed

Inputs and modules are built outside the timed region; warm-up runs first (Triton compiles
there); every timed run is synchronised; the median of --rounds runs is reported with the
device, torch and triton versions and the date. Results are appended as JSON lines to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from timing import environment, median_ms  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODULES = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN"}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", choices=sorted(MODULES), default="lstm")
    p.add_argument("--T", type=int, default=512)
    p.add_argument("--B", type=int, default=64)
    p.add_argument("--H", type=int, default=512)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes on the CPU interpreter (smoke test)")
    p.add_argument("--out", default=None, help="append a JSON line per provider to this file")
    return p.parse_args(argv)


def fwd_bwd_step(module, x):
    def step():
        y, _ = module(x)
        y.float().sum().backward()
    return step


def main(argv=None):
    args = parse(argv)
    cuda = torch.cuda.is_available() and not args.quick
    if args.quick:
        os.environ["TRITON_INTERPRET"] = "1"
        args.T, args.B, args.H, args.rounds, args.warmup, args.dtype = 4, 2, 16, 2, 1, "fp32"
    import recgen

    device = "cuda" if cuda else "cpu"
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    extra = {"nonlinearity": "tanh"} if args.cell == "rnn_tanh" else {}
    ref = getattr(torch.nn, MODULES[args.cell])(args.H, args.H, **extra).to(device, dtype)
    rec = getattr(recgen.nn, MODULES[args.cell])(args.H, args.H, **extra).to(device, dtype)
    rec.load_state_dict(ref.state_dict())
    x = torch.randn(args.T, args.B, args.H, device=device, dtype=dtype, requires_grad=True)
    header = {
        **environment(cuda), "op": args.cell, "pass": "fwdbwd", "dtype": args.dtype,
        "shape": {"T": args.T, "B": args.B, "I": args.H, "H": args.H},
    }
    results = {}
    for provider, module in (("recgen", rec), ("cudnn" if cuda else "torch", ref)):
        results[provider] = median_ms(fwd_bwd_step(module, x), args.rounds, args.warmup, cuda)
    base = results["recgen"]
    print(f"{header['device']} | torch {header['torch']} | triton {header['triton']} | {header['date']}")
    print(f"{args.cell} fwd+bwd T={args.T} B={args.B} I=H={args.H} {args.dtype}, median of {args.rounds}")
    for provider, ms in results.items():
        print(f"  {provider:8s} {ms:10.3f} ms   ratio to recgen {ms / base:6.2f}x")
    if args.out:
        with open(args.out, "a") as f:
            for provider, ms in results.items():
                f.write(json.dumps({**header, "provider": provider, "ms": ms}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
