"""The `recgen` command line (also `python -m recgen`)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

PROVIDER_NAMES = ("recgen", "cudnn", "torch", "compile", "flashrnn", "reference", "addmm_activation")
# The modules each subcommand imports beyond torch, and the extra that installs them.
EXTRAS = {
    "train": ("train", ("sklearn", "PIL", "matplotlib", "tqdm")),
    "sample": ("train", ("sklearn", "PIL", "matplotlib")),
    "bench": ("bench", ("tqdm", "matplotlib")),
}
EXAMPLES = {
    "check": "example: recgen check --dtype fp32",
    "bench": "example: recgen bench --quick --family recurrent --provider recgen,cudnn --out results",
    "train": "example: recgen train --model row-lstm --epochs 1 --out runs/row-lstm",
    "sample": "example: recgen sample --checkpoint runs/row-lstm/checkpoint.pt --n 64 --out grid.png",
}


def provider_list(text: str) -> list:
    """`--provider a,b` (repeatable): the names, each checked; 'torch' is 'cudnn' (torch.nn eager)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PROVIDER_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown provider(s) {', '.join(map(repr, unknown)) or repr(text)}; "
            f"expected a comma list of {', '.join(PROVIDER_NAMES)}")
    return ["cudnn" if name == "torch" else name for name in names]


def build_parser() -> argparse.ArgumentParser:
    from recgen import __version__

    parser = argparse.ArgumentParser(
        prog="recgen", description="recgen: fused Triton kernels for torch.nn's recurrent layers and "
        "residual blocks", epilog="example: recgen check && recgen bench --quick")
    parser.add_argument("--version", action="version", version=f"recgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="run every kernel against its reference on this machine",
                           epilog=EXAMPLES["check"])
    check.add_argument("--dtype", action="append", choices=["fp32", "fp16", "bf16"],
                       help="dtype(s) to check (default: all the device supports well)")
    check.add_argument("--mode", action="append", choices=["auto", "resident", "streamed", "persistent", "all"],
                       help="recurrence mode(s) to check: auto (the launchers' rule, the default), a forced "
                            "mode, or all of them")
    bench = sub.add_parser("bench", help="time recgen against cuDNN, torch.compile and peers on this machine",
                           epilog=EXAMPLES["bench"])
    bench.add_argument("--quick", action="store_true", help="the headline subset of the grid")
    bench.add_argument("--family", choices=["recurrent", "residual", "dense"], action="append",
                       help="op family to run, repeatable (default: recurrent and residual)")
    bench.add_argument("--provider", action="append", type=provider_list, metavar="NAME[,NAME...]",
                       help=f"providers to time, a comma list of {', '.join(PROVIDER_NAMES)} "
                            "(default: all a family has; flashrnn is recurrent-only, addmm_activation "
                            "dense-only; recgen is always timed, as every ratio's baseline)")
    bench.add_argument("--out", default="recgen-bench", help="folder for the JSON, markdown and PNG")
    from recgen.app.cli import add_parsers as add_train_parsers
    add_train_parsers(sub)  # train, sample
    for name in ("train", "sample"):
        sub.choices[name].epilog = EXAMPLES[name]
    return parser


def missing_extra(command: str) -> str | None:
    """One line naming the extra to install when a module `command` needs is absent, else None."""
    extra, modules = EXTRAS.get(command, (None, ()))
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (f"recgen {command}: needs the '{extra}' extra (missing: {', '.join(missing)}); "
            f"install it with: pip install \"recgen[{extra}]\"")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = missing_extra(args.command)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    if args.command in ("train", "sample"):
        return args.handler(args)
    if args.command in ("bench", "check") and needs_interpreter():
        # No CUDA: the kernels run under Triton's interpreter, which must be on before Triton
        # first decorates them, so the command runs again in a process started with it.
        import subprocess

        argv = sys.argv[1:] if argv is None else list(argv)
        return subprocess.run([sys.executable, "-m", "recgen", *argv],
                              env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONSAFEPATH": "1"}).returncode
    if args.command == "bench":
        return _bench(args)
    if args.command == "check":
        import torch

        from recgen.check import run_check
        names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        dtypes = [names[d] for d in args.dtype] if args.dtype else None
        from recgen.check import MODES
        modes = MODES if "all" in (args.mode or ()) else tuple(dict.fromkeys(args.mode or ("auto",)))
        return 0 if run_check(dtypes, modes=modes) else 1
    parser.error(f"unknown command {args.command}")  # argparse already rejects; kept explicit
    return 2


def needs_interpreter() -> bool:
    """No CUDA device, and this process was not started with TRITON_INTERPRET=1."""
    import torch

    return not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"


def _bench(args) -> int:
    import torch
    if not torch.cuda.is_available():
        print("No CUDA device: running the small CPU grid; CPU timings (recgen under Triton's "
              "interpreter, torch.nn on torch's CPU kernels, rows named 'torch') say nothing about "
              "kernel speed.")
    from recgen.tools.bench_report import to_markdown, write_report
    from recgen.tools.benchmark import FAMILY_PROVIDERS, PROVIDERS, run

    families = tuple(dict.fromkeys(args.family or ("recurrent", "residual")))
    chosen = [name for names in args.provider for name in names] if args.provider else list(PROVIDERS)
    providers = tuple(dict.fromkeys(["recgen", *chosen]))  # recgen first: the ratios' baseline
    idle = [name for name in providers if not any(name in FAMILY_PROVIDERS[f] for f in families)]
    if args.provider and idle:
        print(f"recgen bench: error: provider(s) {', '.join(idle)} time none of the families "
              f"{', '.join(families)} (flashrnn: recurrent; addmm_activation: dense)", file=sys.stderr)
        return 2
    results = run(families, quick=args.quick, providers=providers)
    print(to_markdown(results))
    for kind, path in write_report(results, args.out).items():
        print(f"wrote {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
