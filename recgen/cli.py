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
    args = parser.parse_args(argv)
    if args.command == "check":
        import torch

        from recgen.check import run_check
        names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        dtypes = [names[d] for d in args.dtype] if args.dtype else None
        return 0 if run_check(dtypes) else 1
    parser.error(f"unknown command {args.command}")  # argparse already rejects; kept explicit
    return 2


if __name__ == "__main__":
    sys.exit(main())
