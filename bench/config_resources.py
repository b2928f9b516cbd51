"""The tiles every launcher chooses on the bench and check grids, and what they compile to on an
H200 (sm_90), under the Triton installed here, without a GPU.

Each grid point runs through recgen's own modules and launchers inside recgen.tools.capture.capture:
every tile choice is made from kernels compiled for sm_90 (registers, spills and shared memory
read from the cubins, recgen/tools/aot_compile.py), and every launch is recorded instead of run.
So the table says what the launchers would launch on the GPU machine with this Triton, by the
same rule.

    python bench/config_resources.py --out DIR [--grid bench|check|quick ...] [--workers N]
    python bench/config_resources.py --fold-into TABLE.json --grid check --match "check dense"
    python bench/config_resources.py --fold-into TABLE.json --grid check --grid bench \
        --match "check res" --match basicblock
    python bench/config_resources.py --merge DIR/configs-triton3.9.json DIR/configs-triton3.6.json --out DIR

The first form writes configs-triton<version>.json (every grid point's launches and decisions,
and every compiled kernel's resources: the table tests/test_config_table.py checks the rule
against) and .md. --fold-into captures only the points of --grid / --match (--match may be given several times: a
point matching any of them; a partial capture:
a new op's check line, say) and puts them into an existing table of the same Triton version in
place of its entries for those points, keeping every other point, in the grid's order; it
rewrites the table's .json and .md and names each folded launch that spills. The third writes
configs-sm90.md: per grid point and launch, the choice and
its registers / spilled bytes / shared memory under each Triton version side by side.
The persistent mode is captured on and off (RECGEN_PERSISTENT) for the recurrent bench grid.

    python bench/config_resources.py --replay TABLE.json [--grid check --grid quick]
    python bench/config_resources.py --recompile TABLE.json [--workers N]
    python bench/config_resources.py --prewarm TABLE.json [--workers N]
    python bench/config_resources.py --estimate SESSION.json --workers 16

tests/test_config_table.py runs these: --replay makes the grid's choices with the table
answering for the compiler (no compilation) and exits 1 unless they are the table's launches;
--recompile compiles every launch of the table with this Triton and exits 1 on a spill the
table does not record. --prewarm compiles a table's kernels in parallel into Triton's cache
(bench/gpu_session.sh, before its stages run the same points).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import multiprocessing
import os
import re
import sys
import time

GRIDS = ("check", "bench", "quick", "session")
# The persistent mode at H=1024 with B >= 64 is not captured: no candidate steps through one
# tile per program there (one program per SM, too few SMs for a group per tile), so the rule
# compiles every candidate (up to 12, with the pruning in pick_plan), at minutes each for these
# W_hh slices on this 2-core machine. The GPU machine compiles them at the first such call.
UNCAPTURED_PERSISTENT = {(1024, 64), (1024, 256)}
CAPTURE_T = 16  # steps per captured sequence: T only reaches the kernels as an int (a multiple of 16, as 64 and 512)


def points(grids) -> list:
    """(label, grid, spec) of every point of `grids`: 'check' (recgen check's cases in fp32, fp16
    and bf16), 'bench' (the standard recurrent and residual grids, the persistent mode off and on),
    'quick' (--quick's points only, labelled as the bench points they are), 'session' (what
    bench/gpu_session.sh runs: `recgen check
    --mode all` in bf16 and fp32, then the quick points)."""
    from recgen import check
    from recgen.tools import benchmark

    out = []
    if "check" in grids:
        for label, _ in check.checks():
            for dtype in ("fp32", "fp16", "bf16"):
                out.append((f"check {label} {dtype}", "check", (label, dtype)))
    if "session" in grids:
        for label, _ in check.checks(check.MODES):
            for dtype in ("bf16", "fp32"):
                out.append((f"session check {label} {dtype}", "check", (label, dtype)))
    for name in ("bench", "quick", "session"):
        if name not in grids:
            continue
        for family in ("recurrent", "residual"):
            for case in benchmark.grid(family, quick=name != "bench", cuda=True):
                shape = {k: v for k, v in case.shape.items() if k != "T"}  # T: any (CAPTURE_T)
                for persistent in ((False, True) if family == "recurrent" else (False,)):
                    prefix = "bench" if name == "quick" else name  # quick's points are bench points
                    label = f"{prefix} {case.op} " + " ".join(f"{k}={v}" for k, v in shape.items()) + \
                        f" {case.dtype}" + (" persistent" if persistent else "")
                    if persistent and (shape["H"], shape["B"]) in UNCAPTURED_PERSISTENT:
                        continue
                    out.append((label, name, (family, case.op, case.dtype, tuple(shape.items()), persistent)))
    return list({label: (label, grid, spec) for label, grid, spec in out}.values())


def _run_point(state, label: str, grid: str, spec) -> None:
    """Run one grid point's forward (no grad; label `fwd`) and forward + backward (label `fwdbwd`)
    through the launchers; the check grid's points as `recgen check` runs them."""
    import torch

    import recgen
    from recgen import check
    from recgen.tools import benchmark
    from recgen.backend import backend

    if grid == "check":
        from recgen.testing import DTYPE_NAMES, full_float32
        op_label, dtype_name = spec
        dtype = {v: k for k, v in DTYPE_NAMES.items()}[dtype_name]
        state.label = label
        with full_float32(), backend("triton"):
            for errors_of_label, errors_of in check.checks(check.MODES):
                if errors_of_label == op_label:
                    for _ in errors_of(dtype, "cpu"):
                        pass
        return
    family, op, dtype, shape, persistent = spec
    shape = dict(shape)
    if family == "recurrent":
        shape = {"T": CAPTURE_T, **shape}
    case = benchmark.Case(family, op, dtype, shape)
    os.environ["RECGEN_PERSISTENT"] = "1" if persistent else "0"
    module, x = benchmark.build(case, "cpu")
    model = recgen.convert(module)
    with backend("triton"):
        state.label = f"{label} fwd"
        with torch.no_grad():
            model(x)
        if family == "residual" and not shape["train"]:
            return  # eval blocks are benchmarked forward only
        state.label = f"{label} fwdbwd"
        out = model(x.requires_grad_())
        out = out[0] if isinstance(out, tuple) else out
        out.float().sum().backward()


def capture_points(chunk: list) -> dict:
    """Run `chunk`'s points in one capture (never under the interpreter): their launches and
    decisions, and the resources of every kernel compiled."""
    os.environ.pop("TRITON_INTERPRET", None)
    from recgen.tools.capture import capture

    results = []
    with capture() as state:
        for label, grid, spec in chunk:
            start = time.perf_counter()
            _run_point(state, label, grid, spec)
            results.append({"label": label, "seconds": round(time.perf_counter() - start, 1)})
            print(f"{label}: {results[-1]['seconds']} s", flush=True)
    return {"points": results, "launches": state.launches, "decisions": state.decisions,
            "compiled": [{"identity": key, "resources": value, "seconds": round(state.seconds.get(key, 0.0), 2),
                          "first_label": state.first_label.get(key)} for key, value in state.compiled.items()]}


def _chosen_rows(report: dict) -> list:
    """One row per (grid point, launch): the launch's tiles and its compiled resources."""
    compiled = {_frozen(entry["identity"]): entry["resources"] for entry in report["compiled"]}
    rows, seen = [], set()
    for launch in report["launches"]:
        identity = _frozen(launch["identity"])
        key = (launch["label"], launch["name"], identity)
        if key in seen:
            continue
        seen.add(key)
        rows.append({"label": launch["label"], "name": launch["name"], "tiles": tiles_text(identity),
                     "resources": compiled.get(identity)})
    return rows


def persistent_choices(report: dict) -> list:
    """The persistent plans launched on the bench grid, one per (kernel, dtype, H, B), in the
    form recgen/tools/perf_model.py's persistent_table reads (bench/kernel_resources.py's 'choices'):
    dtype 'tf32' for float32 (TF32 dots, torch's default for its RNNs), rows_per_step the batch
    rows each program steps through (its tiles, one after another)."""
    import re

    choices = {}
    for launch in report["launches"]:
        found = re.fullmatch(r"bench \w+ B=(\d+) I=\d+ H=(\d+) (\w+) persistent fwdbwd", launch["label"])
        if not found or not launch["name"].endswith("_persistent"):
            continue
        batch, hidden, dtype = int(found[1]), int(found[2]), found[3]
        specs = dict(_frozen(launch["identity"])[1])
        block_b, groups = specs["BLOCK_B"], launch["grid"][2]
        tiles = -(-batch // block_b)
        kernel = launch["name"].removesuffix("_persistent")
        choices[(kernel, dtype, hidden, batch)] = {
            "kernel": kernel, "dtype": "tf32" if dtype == "fp32" else dtype, "H": hidden, "B": batch,
            "block_h": specs["BLOCK_H"], "groups": groups, "rows_per_step": -(-tiles // groups) * block_b}
    return list(choices.values())


def tiles_text(identity) -> str:
    """The tile part of a compiled-kernel identity: block sizes, RESIDENT, warps, stages."""
    _, specs, options = identity
    blocks = " ".join(f"{k}={v}" for k, v in specs if k.startswith("BLOCK_") or k == "RESIDENT")
    return blocks + " " + " ".join(f"{k.removeprefix('num_')}={v}" for k, v in options
                                   if k != "launch_cooperative_grid")


def _frozen(value):
    """JSON lists back into the tuples an identity is made of."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _resources_text(resources) -> str:
    if resources is None:
        return "does not load"
    return f"{resources['registers']} / {resources['spilled_bytes']} / {resources['shared_bytes']}"


def to_markdown(report: dict) -> str:
    lines = [f"Compiled for sm_90 without a GPU, Triton {report['triton']}, {report['date']}: the launchers' "
             "choices (registers / spilled bytes per thread / shared bytes per program).", "",
             "| grid point | launch | tiles | regs / spill B / shared B |", "|---|---|---|---|"]
    for row in _chosen_rows(report):
        lines.append(f"| {row['label']} | {row['name']} | {row['tiles']} | {_resources_text(row['resources'])} |")
    return "\n".join(lines) + "\n"


def merged_markdown(reports: list) -> str:
    """Per grid point and launch: each report's choice and resources, side by side."""
    versions = [r["triton"] for r in reports]
    by_report = [{(row["label"], row["name"]): row for row in _chosen_rows(r)} for r in reports]
    keys = list(dict.fromkeys(k for rows in by_report for k in rows))
    spills = {v: 0 for v in versions}
    lines = ["| grid point | launch | " + " | ".join(f"Triton {v}: tiles | regs / spill B / shared B"
                                                     for v in versions) + " |",
             "|---|---|" + "---|---|" * len(versions)]
    for key in keys:
        cells = []
        for version, rows in zip(versions, by_report):
            row = rows.get(key)
            if row is None:
                cells += ["not captured", ""]
                continue
            cells += [row["tiles"], _resources_text(row["resources"])]
            if row["resources"] is not None and row["resources"]["spilled_bytes"]:
                spills[version] += 1
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    summary = ", ".join(f"Triton {v}: {n} of {len(keys)} launches spill" for v, n in spills.items())
    spilling = [f"- Triton {version}: {key[0]}, {key[1]}: {row['tiles']}, {row['resources']['spilled_bytes']} "
                "bytes per thread (no candidate compiled spill-free; the least spilling is taken)"
                for version, rows in zip(versions, by_report) for key, row in rows.items()
                if row["resources"] is not None and row["resources"]["spilled_bytes"]]
    skipped = ", ".join(f"H={h} B={b}" for h, b in sorted(UNCAPTURED_PERSISTENT))
    return (f"Chosen tiles on the bench and check grids, compiled for sm_90 (H200) without a GPU "
            f"({', '.join(r['date'] for r in reports)}). {summary}. Not captured: the persistent mode at "
            f"{skipped} (see bench/config_resources.py).\n\n"
            + ("Spilling choices:\n\n" + "\n".join(spilling) + "\n\n" if spilling else "")
            + "\n".join(lines) + "\n")


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def matching(label: str, matches) -> bool:
    """Whether a grid point's label contains any of `matches` (a string or a list; none: every label)."""
    if not matches:
        return True
    return any(m in label for m in ([matches] if isinstance(matches, str) else matches))


def replay(report: dict, grids, match=None) -> list:
    """Differences between the launches the rule makes now on `grids` (the table answering for
    the compiler) and the table's launches for the same points: [] when they agree."""
    os.environ.pop("TRITON_INTERPRET", None)
    from recgen.tools.capture import capture

    table = {_frozen(e["identity"]): e["resources"] for e in report["compiled"]}
    with capture(table=table) as state:
        for label, grid, spec in points(grids):
            if matching(label, match):
                _run_point(state, label, grid, spec)
    made = [(l["label"], l["name"], _frozen(l["identity"])) for l in state.launches]
    labels = {m[0] for m in made}
    committed = [(l["label"], l["name"], _frozen(l["identity"])) for l in report["launches"] if l["label"] in labels]
    return [f"now {m}, table {c}" for m, c in zip(made, committed) if m != c] + \
        ([f"{len(made)} launches now, {len(committed)} in the table"] if len(made) != len(committed) else [])


def _recompile_one(identity) -> dict:
    os.environ.pop("TRITON_INTERPRET", None)
    from recgen.tools.aot_compile import identity_resources, kernel_named

    return identity_resources(kernel_named(identity[0]), identity)


def _point_label(label: str) -> str:
    return label.removesuffix(" fwdbwd").removesuffix(" fwd")


def recompile(report: dict, workers: int, grids=None) -> list:
    """Every launched kernel of the table (of the points of `grids` only, when given) compiled
    again with this Triton: the ones that now spill more than the table records (or no longer
    load), as (identity, table, now)."""
    recorded = {_frozen(e["identity"]): e["resources"] for e in report["compiled"]}
    labels = None if grids is None else {label for label, _, _ in points(grids)}
    launched = list(dict.fromkeys(_frozen(l["identity"]) for l in report["launches"]
                                  if labels is None or _point_label(l["label"]) in labels))
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        now = list(pool.map(_recompile_one, launched))
    print(f"recompiled {len(launched)} launched kernels")
    return [(identity, recorded[identity], found) for identity, found in zip(launched, now)
            if found is None or found["spilled_bytes"] > (recorded[identity] or {}).get("spilled_bytes", 0)]


def session_stage(label: str) -> str:
    """The bench/gpu_session.sh stage that runs a 'session' grid point."""
    if label.startswith("session check "):
        return "check"
    if " persistent" in label:
        return "bench-recurrent-persistent"
    return "bench-residual" if "block" in label.split()[1] else "bench-recurrent"


def makespan(seconds: list, workers: int) -> float:
    """Wall time of compiling jobs of these durations on `workers` processes, longest first
    (each job to the least loaded worker)."""
    loads = [0.0] * max(1, workers)
    for job in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += job
    return max(loads)


def estimate(report: dict, workers: int) -> str:
    """Markdown: per gpu_session stage, the kernels it compiles first (from a cold cache), their
    compile CPU seconds here, and the wall time of compiling them in one process and on
    `workers` processes (the prewarm)."""
    stages: dict = {}
    for entry in report["compiled"]:
        stages.setdefault(session_stage(entry["first_label"]), []).append(entry["seconds"])
    lines = [f"Triton {report['triton']}, {report['date']}: kernels compiled for sm_90 by each stage's points, from "
             "a cold cache (CPU seconds of the compiler and ptxas on this machine).", "",
             f"| stage | kernels | compile s, one process | longest | on {workers} processes |", "|---|---|---|---|---|"]
    every = []
    for stage in ("check", "bench-recurrent", "bench-recurrent-persistent", "bench-residual"):
        jobs = stages.get(stage, [])
        every += jobs
        lines.append(f"| {stage} | {len(jobs)} | {sum(jobs):.0f} | {max(jobs, default=0):.1f} | "
                     f"{makespan(jobs, workers):.0f} |")
    lines.append(f"| all (the prewarm) | {len(every)} | {sum(every):.0f} | {max(every, default=0):.1f} | "
                 f"{makespan(every, workers):.0f} |")
    return "\n".join(lines) + "\n"


def prewarm(report: dict, workers: int) -> int:
    """Compile every kernel the table compiled (launched or tried), in `workers` processes, for
    sm_90 through Triton's own binder (recgen.tools.aot_compile.launch_resources: the runtime's source and
    options, so its cache entries), so that a run of the same points finds them in Triton's
    cache instead of compiling one after another. Returns the number compiled."""
    identities = [_frozen(e["identity"]) for e in report["compiled"]]
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_recompile_one, identities))
    return len(identities)


# The points docs/performance.md quotes: every recurrence of the bench grid at B=16 (training:
# the saving forward and the backward), in the single-program and the persistent mode, and the
# residual blocks at --quick's size.
QUOTED = re.compile(r"bench (lstm|gru|rnn_tanh) B=16 I=\d+ H=\d+ \w+( persistent)? fwdbwd"
                    r"|bench \w+block\w* N=8 C=128 H=64 W=64 train=True bf16 fwdbwd")


def quoted_markdown(reports: list) -> str:
    """The quoted subset of merged_markdown(): one line per (point, launch), each report's tiles
    and registers / spilled bytes / shared bytes."""
    versions = [r["triton"] for r in reports]
    by_report = [{(row["label"], row["name"]): row for row in _chosen_rows(r)} for r in reports]
    keys = [k for k in dict.fromkeys(k for rows in by_report for k in rows) if QUOTED.fullmatch(k[0])]
    lines = ["| grid point (training) | launch | " + " | ".join(f"{v}: tiles | {v}: regs / spill / shared"
                                                              for v in versions) + " |",
             "|---|---|" + "---|---|" * len(versions)]
    for key in keys:
        cells = []
        for rows in by_report:
            row = rows.get(key)
            cells += ["not captured", ""] if row is None else [row["tiles"], _resources_text(row["resources"])]
        lines.append(f"| {key[0].removeprefix('bench ').removesuffix(' fwdbwd')} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def capture_report(todo: list, workers: int) -> dict:
    """Capture the points `todo` in `workers` processes: the report a table is made of."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton

    chunks = [todo[i::workers] for i in range(min(workers, len(todo)))]
    start = time.perf_counter()
    report = {"target": "sm_90 (H200), compiled without a GPU", "triton": triton.__version__,
              "date": datetime.date.today().isoformat(), "points": [], "launches": [], "decisions": [],
              "compiled": []}
    with concurrent.futures.ProcessPoolExecutor(len(chunks), mp_context=multiprocessing.get_context("spawn")) as pool:
        for part in pool.map(capture_points, chunks):
            for key in ("points", "launches", "decisions"):
                report[key] += part[key]
            report["compiled"] += part["compiled"]
    unique = {json.dumps(e["identity"]): e for e in report["compiled"]}
    report["compiled"] = sorted(unique.values(), key=lambda e: json.dumps(e["identity"]))
    order = {label: i for i, (label, _, _) in enumerate(todo)}
    for key in ("points", "launches", "decisions"):
        report[key].sort(key=lambda e: order[_point_label(e["label"])])
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["choices"] = persistent_choices(report)
    return report


def _table_grids(table: dict) -> tuple:
    """The grids a table's points come from, read off their labels ('check ...', 'bench ...',
    'session ...'; --quick's points are labelled as the bench points they are)."""
    firsts = {e["label"].split()[0] for e in table["points"]}
    return tuple(grid for grid in ("check", "bench", "session") if grid in firsts)


def _current_signature(identity) -> bool:
    """Whether a compiled-kernel identity (name, [(param, value), ...], options) names the
    parameters the kernel of that name has now."""
    from recgen.tools.aot_compile import kernel_named

    return tuple(name for name, _ in identity[1]) == tuple(kernel_named(identity[0]).arg_names)


def fold(table: dict, part: dict) -> dict:
    """`table` with the points `part` captured replaced by part's entries (launches, decisions,
    points) and part's compiled kernels added, everything in the order of the table's grids
    (points()). Both must come from the same Triton version."""
    if table["triton"] != part["triton"]:
        raise SystemExit(f"cannot fold a Triton {part['triton']} capture into a Triton {table['triton']} table")
    folded = {e["label"] for e in part["points"]}
    order = {label: i for i, (label, _, _) in enumerate(points(_table_grids(table) or ("check", "bench")))}
    merged = dict(table)
    for key in ("points", "launches", "decisions"):
        kept = [e for e in table[key] if _point_label(e["label"]) not in folded]
        merged[key] = sorted(kept + part[key], key=lambda e: order.get(_point_label(e["label"]), len(order)))
    compiled = {json.dumps(e["identity"]): e for e in part["compiled"]}
    # The table's own stay as recorded, but for an older signature of a kernel (an argument added
    # or renamed since): those entries can match no launch any more.
    compiled.update({json.dumps(e["identity"]): e for e in table["compiled"] if _current_signature(e["identity"])})
    merged["compiled"] = sorted(compiled.values(), key=lambda e: json.dumps(e["identity"]))
    merged["seconds"] = round(table.get("seconds", 0.0) + part["seconds"], 1)
    merged["folded"] = table.get("folded", []) + [{"date": part["date"], "points": sorted(folded),
                                                   "seconds": part["seconds"]}]
    merged["choices"] = persistent_choices(merged)
    return merged


def spilling_launches(report: dict, labels) -> list:
    """The chosen launches of the points `labels` whose compiled kernel spills (or does not load)."""
    return [row for row in _chosen_rows(report) if _point_label(row["label"]) in labels
            and (row["resources"] is None or row["resources"]["spilled_bytes"])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", action="append", choices=GRIDS)
    parser.add_argument("--match", action="append",
                        help="only grid points whose label contains this text (repeatable: any of them)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--merge", nargs="+", help="configs-triton*.json files to put side by side")
    parser.add_argument("--replay", help="a configs-triton*.json table: check the rule's choices against it")
    parser.add_argument("--recompile", help="a configs-triton*.json table: check its launches for new spills")
    parser.add_argument("--prewarm", help="a configs-triton*.json table: compile all its kernels in parallel")
    parser.add_argument("--estimate", help="a 'session' capture: its compile-time estimate per gpu_session stage")
    parser.add_argument("--fold-into", metavar="TABLE",
                        help="a configs-triton*.json table: capture the --grid / --match points and put them into it")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.replay:
        differences = replay(_load(args.replay), args.grid or ("check", "quick"), args.match)
        print("\n".join(differences) or "the rule makes the table's launches")
        return 1 if differences else 0
    if args.recompile:
        spilled = recompile(_load(args.recompile), args.workers, args.grid)
        print("\n".join(f"new spill: {identity[0]} {tiles_text(identity)}: table {before}, now {now}"
                        for identity, before, now in spilled) or "no new spill")
        return 1 if spilled else 0
    if args.estimate:
        print(estimate(_load(args.estimate), args.workers))
        return 0
    if args.prewarm:
        start = time.perf_counter()
        count = prewarm(_load(args.prewarm), args.workers)
        print(f"prewarmed {count} kernels with {args.workers} workers in {time.perf_counter() - start:.1f} s")
        return 0
    if args.fold_into:
        todo = [p for p in points(args.grid or ("check",)) if matching(p[0], args.match)]
        if not todo:
            parser.error("no grid point matches --grid / --match")
        part = capture_report(todo, args.workers)
        table = fold(_load(args.fold_into), part)
        with open(args.fold_into, "w") as f:
            f.write(json.dumps(table, indent=0))
        markdown = args.fold_into.removesuffix(".json") + ".md"
        with open(markdown, "w") as f:
            f.write(to_markdown(table))
        print(f"folded {len(todo)} grid points ({len(part['launches'])} launches, {len(part['compiled'])} kernels "
              f"compiled, {part['seconds']} s) into {args.fold_into} and {markdown}")
        spilled = spilling_launches(table, {label for label, _, _ in todo})
        print("\n".join(f"spills: {row['label']} {row['name']} {row['tiles']}: {_resources_text(row['resources'])}"
                        for row in spilled) or "no folded launch spills")
        return 1 if spilled else 0
    if not args.out:
        parser.error("--out is required to capture or merge")
    os.makedirs(args.out, exist_ok=True)
    if args.merge:
        reports = []
        for path in args.merge:
            with open(path) as f:
                reports.append(json.load(f))
        for name, text in (("configs-sm90.md", merged_markdown(reports)), ("quoted-sm90.md", quoted_markdown(reports))):
            path = os.path.join(args.out, name)
            with open(path, "w") as f:
                f.write(text)
            print(f"wrote {path}")
        return 0
    todo = [p for p in points(args.grid or ("check", "bench")) if matching(p[0], args.match)]
    report = capture_report(todo, args.workers)
    name = f"configs-triton{report['triton']}"
    for suffix, text in ((".json", json.dumps(report, indent=0)), (".md", to_markdown(report))):
        with open(os.path.join(args.out, name + suffix), "w") as f:
            f.write(text)
        print(f"wrote {os.path.join(args.out, name + suffix)}")
    print(f"{len(todo)} grid points, {len(report['compiled'])} kernels compiled, {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
