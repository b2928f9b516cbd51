"""The `recgen train` and `recgen sample` commands: their argparse parsers and handlers.

`add_parsers(subparsers)` adds 'train' and 'sample' (recgen/cli.py calls it); `main_train(args)` and
`main_sample(args)` take their argparse Namespace and return the exit status (2 for bad input, with
the message on stderr). The work itself is recgen.app.train's.

    parser = argparse.ArgumentParser(prog="recgen")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", "--model", "row-lstm", "--epochs", "1"])
    status = args.handler(args)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from recgen.app.train import (DEFAULT_BATCH_SIZE, DEFAULT_COMPARE_STEPS, GRID_SAMPLES, USAGE_ERRORS,
                              TrainingDiverged, compare_torch, sample_grid, train)

MODEL_NAMES = ("row-lstm", "rnn-gan", "res-gan", "cyclic-mlp")  # for help texts; recgen.app.models.MODELS decides


def _option_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_options(hidden: int | None = None, pairs=()) -> dict:
    """--hidden N and --option KEY=VALUE (repeatable; ints, floats, true/false/none, else text) -> options."""
    options = {} if hidden is None else {"hidden": hidden}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = _option_value(value.strip())
    return options


def add_parsers(subparsers) -> None:
    """Add the 'train' and 'sample' commands to an argparse subparsers object; each sets `handler`."""
    names = ", ".join(MODEL_NAMES)
    t = subparsers.add_parser("train", help="train a generative model on digits or a folder of images",
                              description="Train a recgen image model; see recgen.app.train.")
    t.add_argument("--model", required=True, help=f"one of {names}")
    t.add_argument("--data", default=None, help="'digits' (default) or a folder of png/jpg/jpeg/bmp/gif images")
    t.add_argument("--epochs", type=int, default=10, help="epochs to reach (with --resume: in total); default 10")
    t.add_argument("--batch-size", type=int, default=None, help=f"default {DEFAULT_BATCH_SIZE}")
    t.add_argument("--out", default=None, help="run folder (default runs/MODEL)")
    t.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt")
    t.add_argument("--compare-torch", action="store_true",
                   help="time K steps against the model's torch.nn twin and compare losses (no training run)")
    t.add_argument("--steps", type=int, default=None, help=f"K for --compare-torch (default {DEFAULT_COMPARE_STEPS})")
    t.add_argument("--hidden", type=int, default=None, help="hidden size (row-lstm, rnn-gan, cyclic-mlp)")
    t.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="another model option, e.g. base=32, noise_dim=16, discriminator=gru (repeatable)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(handler=main_train)
    s = subparsers.add_parser("sample", help="draw samples from a `recgen train` checkpoint into a grid image "
                              "(cyclic-mlp: held-out images beside their reconstructions)")
    s.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by recgen train")
    s.add_argument("--n", type=int, default=GRID_SAMPLES,
                   help=f"number of samples, or of held-out images to reconstruct (default {GRID_SAMPLES})")
    s.add_argument("--out", default="grid.png", help="image file to write (default grid.png)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", choices=["cpu", "cuda"], default=None)
    s.set_defaults(handler=main_sample)


def _usage_error(command: str, error: Exception) -> int:
    print(f"recgen {command}: error: {error}", file=sys.stderr)
    return 2


def main_train(args) -> int:
    """`recgen train` from its argparse Namespace (see add_parsers): 0 on success, 2 for bad input,
    1 when training diverged, 130 when interrupted."""
    try:
        options = parse_options(args.hidden, args.option)
        if args.compare_torch:
            if args.resume:
                raise ValueError("--compare-torch starts from fresh weights: it cannot be combined with --resume")
            numbers = compare_torch(args.model, data=args.data or "digits",
                                    steps=DEFAULT_COMPARE_STEPS if args.steps is None else args.steps,
                                    batch_size=args.batch_size or DEFAULT_BATCH_SIZE, device=args.device,
                                    seed=args.seed, options=options)
            if args.out is not None:
                target = Path(args.out) / "compare_torch.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(numbers, indent=2))
                print(f"wrote {target}")
            return 0
        if args.steps is not None:
            raise ValueError("--steps applies only with --compare-torch")
        train(args.model, data=args.data, epochs=args.epochs, batch_size=args.batch_size,
              out=args.out or os.path.join("runs", args.model), device=args.device, seed=args.seed,
              resume=args.resume, options=options, progress=not args.no_progress)
    except USAGE_ERRORS as error:
        return _usage_error("train", error)
    except TrainingDiverged as error:
        print(f"recgen train: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def main_sample(args) -> int:
    """`recgen sample` from its argparse Namespace: 0 on success, 2 for bad input."""
    try:
        path = sample_grid(args.checkpoint, n=args.n, out=args.out, seed=args.seed, device=args.device)
    except USAGE_ERRORS as error:
        return _usage_error("sample", error)
    print(f"wrote {path}")
    return 0
