"""The `recgen` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="recgen", description="recgen: fused Triton recurrent layers")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="run every kernel against its reference on this machine")
    check.add_argument("--dtype", action="append", choices=["fp32", "fp16", "bf16"],
                       help="dtype(s) to check (default: all the device supports well)")
    bench = sub.add_parser("bench", help="time recgen against cuDNN, torch.compile and peers on this machine")
    bench.add_argument("--quick", action="store_true", help="the headline subset of the grid")
    bench.add_argument("--family", choices=["recurrent", "residual"], action="append",
                       help="op family to run (default: both)")
    bench.add_argument("--provider", action="append", choices=["recgen", "cudnn", "compile", "flashrnn", "reference"],
                       help="providers to time (default: all)")
    bench.add_argument("--out", default="recgen-bench", help="folder for the JSON, markdown and PNG")
    from recgen.train import add_parsers as add_train_parsers
    add_train_parsers(sub)  # train, sample
    args = parser.parse_args(argv)
    if args.command in ("train", "sample"):
        return args.handler(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "check":
        import torch

        from recgen.check import run_check
        names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        dtypes = [names[d] for d in args.dtype] if args.dtype else None
        return 0 if run_check(dtypes) else 1
    parser.error(f"unknown command {args.command}")  # argparse already rejects; kept explicit
    return 2


def _bench(args) -> int:
    import os

    import torch
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
        print("No CUDA device: running the small CPU grid; CPU timings (recgen under Triton's "
              "interpreter) say nothing about kernel speed.")
    from recgen.bench_report import to_markdown, write_report
    from recgen.benchmark import PROVIDERS, run

    families = tuple(args.family or ("recurrent", "residual"))
    results = run(families, quick=args.quick, providers=tuple(args.provider or PROVIDERS))
    print(to_markdown(results))
    for kind, path in write_report(results, args.out).items():
        print(f"wrote {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
