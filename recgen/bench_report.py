"""The report side of `recgen bench`: check a results dict, compare every peer with recgen
case by case, and write the results as JSON, a markdown table and a PNG of the ratios.

The results dict has one fixed shape, so that files from different machines can be compared
by a script:

    {"device": "NVIDIA H200", "torch": "2.5.1", "triton": "3.1.0", "date": "2025-01-31",
     "results": [{"family": "recurrent", "op": "lstm", "pass": "fwdbwd", "dtype": "bf16",
                  "shape": {"T": 64, "B": 16, "I": 128, "H": 256}, "provider": "recgen",
                  "ms": 1.25, "peak_mb": 30.5, "note": ""}, ...]}

`shape` holds T, B, I, H for the recurrent family and N, C, H, W, train for the residual one.
A provider that could not run a case has `ms` None and the reason in `note`. Ratios are
peer ms / recgen ms: above 1, recgen is faster.

    paths = write_report(results, "bench/out")   # {"json": ..., "md": ..., "png": ...}

matplotlib is imported only inside `plot_ratios`, so importing this module stays cheap.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from pathlib import Path

BASELINE = "recgen"
TOP_KEYS = ("device", "torch", "triton", "date", "results")
ROW_KEYS = ("family", "op", "pass", "dtype", "shape", "provider", "ms", "peak_mb", "note")
FAMILIES = {"recurrent": ("T", "B", "I", "H"), "residual": ("N", "C", "H", "W", "train")}
PASSES = ("fwd", "fwdbwd")
DTYPES = ("fp32", "bf16", "fp16")
CASE_FIELDS = ("family", "op", "pass", "dtype", "shape")


def _fail(field: str, problem: str):
    raise ValueError(f"{field}: {problem}")


def _check_keys(obj, expected, field: str) -> None:
    if not isinstance(obj, dict):
        _fail(field or "results file", f"must be a dict, got {type(obj).__name__}")
    for key in expected:
        if key not in obj:
            _fail(f"{field}.{key}" if field else key, "missing")
    for key in obj:
        if key not in expected:
            # An unknown key is refused, not ignored: a typo ("peak_MB") would otherwise
            # silently drop a column from every comparison.
            _fail(f"{field}.{key}" if field else str(key), "unexpected key")


def _check_str(value, field: str, allowed=None, nonempty: bool = True) -> None:
    if not isinstance(value, str):
        _fail(field, f"must be a str, got {type(value).__name__}")
    if nonempty and not value.strip():
        _fail(field, "must not be empty")
    if allowed is not None and value not in allowed:
        _fail(field, f"must be one of {list(allowed)}, got {value!r}")


def _check_number(value, field: str, positive: bool) -> None:
    """`value` must be None or a finite number (bool, although an int in Python, is refused)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(field, f"must be a number or null, got {type(value).__name__}")
    if not math.isfinite(value):
        _fail(field, f"must be finite, got {value!r}")
    # ms must be > 0 because ratios divide by it and the plot's y axis is logarithmic.
    if positive and value <= 0:
        _fail(field, f"must be > 0, got {value!r}")
    if value < 0:
        _fail(field, f"must be >= 0, got {value!r}")


def _check_shape(shape, family: str, field: str) -> None:
    _check_keys(shape, FAMILIES[family], field)
    for key, value in shape.items():
        if key == "train":
            if not isinstance(value, bool):
                _fail(f"{field}.train", f"must be a bool, got {type(value).__name__}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(f"{field}.{key}", f"must be a positive int, got {value!r}")


def _check_row(row, field: str) -> None:
    _check_keys(row, ROW_KEYS, field)
    _check_str(row["family"], f"{field}.family", FAMILIES)
    _check_str(row["op"], f"{field}.op")
    _check_str(row["pass"], f"{field}.pass", PASSES)
    _check_str(row["dtype"], f"{field}.dtype", DTYPES)
    _check_shape(row["shape"], row["family"], f"{field}.shape")
    _check_str(row["provider"], f"{field}.provider")
    _check_number(row["ms"], f"{field}.ms", positive=True)
    _check_number(row["peak_mb"], f"{field}.peak_mb", positive=False)
    _check_str(row["note"], f"{field}.note", nonempty=False)
    if row["ms"] is None and not row["note"].strip():
        _fail(f"{field}.note", "must give the reason when ms is null")


def validate(results: dict) -> None:
    """Raise ValueError naming the first field (e.g. `results[3].shape.T`) that breaks the
    results format described in the module docstring; return None if all is well.

        validate({"device": "cpu", "torch": "2.5", "triton": "3.1", "date": "2025-01-31",
                  "results": []})
    """
    _check_keys(results, TOP_KEYS, "")
    for key in ("device", "torch", "triton"):
        _check_str(results[key], key)
    date = results["date"]
    _check_str(date, "date")
    # fromisoformat alone would also take "20250131" on newer Pythons; the format is fixed.
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        _fail("date", f"must be YYYY-MM-DD, got {date!r}")
    try:
        datetime.date.fromisoformat(date)
    except ValueError:
        _fail("date", f"is not a calendar date: {date!r}")
    rows = results["results"]
    if not isinstance(rows, list):
        _fail("results", f"must be a list, got {type(rows).__name__}")
    seen = {}
    for i, row in enumerate(rows):
        _check_row(row, f"results[{i}]")
        # Two timings of one provider on one case leave the ratio ambiguous.
        key = (case_key(row), row["provider"])
        if key in seen:
            _fail(f"results[{i}].provider", f"{row['provider']!r} already timed this case "
                                            f"in results[{seen[key]}]")
        seen[key] = i


def case_key(row: dict) -> tuple:
    """The key shared by every provider's row of one case.

        case_key({"family": "residual", "op": "block", "pass": "fwd", "dtype": "fp16",
                  "shape": {"N": 8, "C": 64, "H": 32, "W": 32, "train": True}, ...})
        -> ("residual", "block", "fwd", "fp16",
            (("C", 64), ("H", 32), ("N", 8), ("W", 32), ("train", True)))
    """
    return (row["family"], row["op"], row["pass"], row["dtype"], tuple(sorted(row["shape"].items())))


def peers(results: dict) -> list[str]:
    """Every provider except recgen, in order of first appearance."""
    names = dict.fromkeys(row["provider"] for row in results["results"])
    names.pop(BASELINE, None)
    return list(names)


def ratio_table(results: dict) -> list[dict]:
    """One dict per case, in order of first appearance:

        {"family", "op", "pass", "dtype", "shape",      # the case
         "recgen_ms": float | None, "recgen_note": str,
         "peers": {provider: {"ms": float | None, "ratio": float | None, "note": str}}}

    `ratio` is peer ms / recgen ms (>1: recgen is faster), None when either time is missing.
    Every peer of the file appears in every case; one that has no row for a case gets
    ms None and note "".
    """
    validate(results)
    names = peers(results)
    cases: dict[tuple, dict] = {}
    for row in results["results"]:
        cases.setdefault(case_key(row), {}).setdefault("rows", []).append(row)
    table = []
    for grouped in cases.values():
        first = grouped["rows"][0]
        by_provider = {row["provider"]: row for row in grouped["rows"]}
        base = by_provider.get(BASELINE)
        base_ms = base["ms"] if base else None
        entry = {field: first[field] for field in CASE_FIELDS}
        entry["shape"] = dict(first["shape"])
        entry["recgen_ms"] = base_ms
        entry["recgen_note"] = base["note"] if base else ""
        entry["peers"] = {}
        for name in names:
            row = by_provider.get(name)
            ms = row["ms"] if row else None
            ratio = ms / base_ms if ms is not None and base_ms is not None else None
            entry["peers"][name] = {"ms": ms, "ratio": ratio, "note": row["note"] if row else ""}
        table.append(entry)
    return table


def shape_text(family: str, shape: dict) -> str:
    """Compact shape: `T=64 B=16 I=128 H=256` (recurrent), `N=8 C=64 32x32 train` (residual)."""
    if family == "recurrent":
        return " ".join(f"{key}={shape[key]}" for key in FAMILIES["recurrent"])
    mode = "train" if shape["train"] else "eval"
    return f"N={shape['N']} C={shape['C']} {shape['H']}x{shape['W']} {mode}"


def _cell_text(text: str) -> str:
    # A "|" or a newline in a note would break the markdown table's columns.
    return " ".join(text.split()).replace("|", "\\|")


def _time_cell(ms, note: str, ratio=None) -> str:
    if ms is None:
        return f"unsupported: {_cell_text(note)}" if note.strip() else "-"
    return f"{ms:.3f} ({ratio:.2f})" if ratio is not None else f"{ms:.3f}"


def _ran(note: str) -> str:
    """' [implementation]' from a recgen row's 'ran: NAME' note (which implementation was timed)."""
    found = re.search(r"\bran: (\w+)", note)
    return f" [{found.group(1)}]" if found else ""


def is_cpu(device: str) -> bool:
    return device.strip().lower().startswith("cpu")


def to_markdown(results: dict) -> str:
    """The report as markdown: a header line (device, torch, triton, date), a table with one
    row per case, where each peer's cell reads `ms (ratio)`, `unsupported: <note>` or `-`,
    and a sentence on how to read the ratios (plus a bold warning for CPU timings).
    """
    table = ratio_table(results)
    names = peers(results)
    lines = [
        f"device: {results['device']} · torch {results['torch']} · triton {results['triton']}"
        f" · date {results['date']}",
        "",
    ]
    if is_cpu(results["device"]):
        lines += ["**CPU timings (Triton interpreter / eager CPU) are not kernel speed; "
                  "do not read them as GPU performance.**", ""]
    head = ["family", "op", "pass", "dtype", "shape", "recgen ms [ran]"] + [f"{name} ms (ratio)" for name in names]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 5 + ["---:"] * (1 + len(names))) + "|")
    for entry in table:
        cells = [entry["family"], _cell_text(entry["op"]), entry["pass"], entry["dtype"],
                 shape_text(entry["family"], entry["shape"]),
                 _time_cell(entry["recgen_ms"], entry["recgen_note"]) + _ran(entry["recgen_note"])]
        cells += [_time_cell(p["ms"], p["note"], p["ratio"]) for p in entry["peers"].values()]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Ratios in parentheses are peer time / recgen time: above 1 means recgen is faster, "
                  "below 1 means the peer is faster."]
    return "\n".join(lines) + "\n"


def case_label(entry: dict) -> str:
    """A one-line name of a case for plot ticks: `lstm fwdbwd bf16 T=64 B=16 I=128 H=256`."""
    return f"{entry['op']} {entry['pass']} {entry['dtype']} {shape_text(entry['family'], entry['shape'])}"


def ratio_figure(results: dict):
    """The matplotlib Figure behind `plot_ratios` (an Agg canvas attached): peer ms / recgen ms
    per case (x) and peer (marker and colour), log y axis, a dashed line at 1. Cases without
    any ratio are left out; if none is left, the figure only says "no comparable results".
    """
    # The Agg canvas is used directly instead of pyplot: no global backend switch, no
    # figure registry, so a caller's own matplotlib set-up is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = [e for e in ratio_table(results) if any(p["ratio"] is not None for p in e["peers"].values())]
    names = [n for n in peers(results) if any(e["peers"][n]["ratio"] is not None for e in table)]
    # Widen the figure with the number of cases so that rotated labels do not overlap.
    fig = Figure(figsize=(max(6.0, 0.45 * len(table) + 2.5), 6.0 if table else 3.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(f"recgen speed-up over peers: {results['device']}, {results['date']}", fontsize=10)
    if not table:
        ax.text(0.5, 0.5, "no comparable results", ha="center", va="center", fontsize=14,
                transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    markers = "osD^vP*Xhp<>"
    # A small horizontal offset per peer keeps equal ratios of different peers visible.
    width = 0.5 / len(names)
    for j, name in enumerate(names):
        xs, ys = [], []
        for i, entry in enumerate(table):
            ratio = entry["peers"][name]["ratio"]
            if ratio is not None:
                xs.append(i + (j - (len(names) - 1) / 2) * width)
                ys.append(ratio)
        ax.scatter(xs, ys, marker=markers[j % len(markers)], color=f"C{j % 10}", label=name, zorder=3)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="parity", zorder=2)
    ax.set_yscale("log")
    ax.set_ylabel("peer ms / recgen ms  (>1: recgen faster)")
    ax.set_xticks(range(len(table)))
    ax.set_xticklabels([case_label(e) for e in table], rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(table) - 0.4)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_ratios(results: dict, path) -> Path:
    """Write `ratio_figure(results)` as a PNG to `path` and return the path.

        plot_ratios(results, "bench/out/h200.png")
    """
    path = Path(path)
    ratio_figure(results).savefig(path, format="png", dpi=100)
    return path


def device_slug(device: str) -> str:
    """`"NVIDIA H200"` -> `"nvidia-h200"`; `"cpu (Triton interpreter)"` -> `"cpu-triton-interpreter"`."""
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "device"


def write_report(results: dict, out_dir) -> dict[str, Path]:
    """Validate `results`, then write `<slug>_<date>.json`, `.md` and `.png` into `out_dir`
    (created if needed). Returns {"json": Path, "md": Path, "png": Path}.

        write_report(results, "bench/out")["md"]  # bench/out/nvidia-h200_2025-01-31.md
    """
    validate(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{device_slug(results['device'])}_{results['date']}"
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    # allow_nan=False: validate already refuses NaN, and NaN is not valid JSON for other readers.
    paths["json"].write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    paths["md"].write_text(to_markdown(results), encoding="utf-8")
    plot_ratios(results, paths["png"])
    return paths


def load(path) -> dict:
    """Read a results JSON file (as written by `write_report`) and validate it."""
    results = json.loads(Path(path).read_text(encoding="utf-8"))
    validate(results)
    return results
