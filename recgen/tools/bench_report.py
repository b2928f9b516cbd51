"""The report side of `recgen bench`: check a results dict, compare every peer with recgen
case by case, and write the results as JSON, a markdown table and a PNG of the ratios.

The results dict has one fixed shape, so that files from different machines can be compared
by a script; `Report` and the frozen dataclasses it holds are that shape, and `from_dict` reads
a dict into them, checking each field against its annotation:

    {"device": "NVIDIA H200", "torch": "2.5.1", "triton": "3.1.0", "date": "2025-01-31",
     "results": [{"family": "recurrent", "op": "lstm", "pass": "fwdbwd", "dtype": "bf16",
                  "shape": {"T": 64, "B": 16, "I": 128, "H": 256}, "provider": "recgen",
                  "ms": 1.25, "peak_mb": 30.5, "note": ""}, ...]}

`shape` holds T, B, I, H for the recurrent family, N, C, H, W, train for the residual one and
B, I, H, O, layers for the dense one (a stack I -> H ... H -> O of `layers` Linear layers).
A provider that could not run a case has `ms` None and the reason in `note`. Ratios are
peer ms / recgen ms: above 1, recgen is faster.

    paths = write_report(results, "bench/out")   # {"json": ..., "md": ..., "png": ...}

matplotlib is imported only inside `plot_ratios`, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

BASELINE = "recgen"
CASE_FIELDS = ("family", "op", "pass", "dtype", "shape")


def _require(ok, field: str, problem: str) -> None:
    """A rule that is not a type, checked in __post_init__; from_dict puts the path before `field`."""
    if not ok:
        raise ValueError(f"{field}: {problem}")


def _positive(shape) -> None:
    for name, value in vars(shape).items():
        _require(isinstance(value, bool) or value >= 1, name, f"must be a positive int, got {value!r}")


@dataclass(frozen=True)
class RecurrentShape:
    T: int
    B: int
    I: int  # noqa: E741 - the glossary's name
    H: int
    __post_init__ = _positive


@dataclass(frozen=True)
class ResidualShape:
    N: int
    C: int
    H: int
    W: int
    train: bool
    __post_init__ = _positive


@dataclass(frozen=True)
class DenseShape:
    """A stack of `layers` Linear layers on a batch of B rows: I -> H, H -> H (layers - 2 times),
    H -> O; one layer (layers = 1) is I -> O and has no hidden width, so H = O."""
    B: int
    I: int  # noqa: E741 - the glossary's name
    H: int
    O: int  # noqa: E741 - the glossary's name
    layers: int

    def __post_init__(self):
        _positive(self)
        _require(self.layers > 1 or self.H == self.O, "H", f"must equal O={self.O} when layers = 1, got {self.H}")


@dataclass(frozen=True)
class Row:
    """One provider's timing of one case; RecurrentRow, ResidualRow and DenseRow tie the shape to
    the family."""
    family: Literal["recurrent", "residual", "dense"]
    op: str
    pass_: Literal["fwd", "fwdbwd"]  # JSON's "pass": from_dict drops a trailing _
    dtype: Literal["fp32", "bf16", "fp16"]
    shape: RecurrentShape | ResidualShape | DenseShape
    provider: str
    ms: float | None  # the median; > 0, as ratios divide by it and the plot's y axis is logarithmic
    peak_mb: float | None
    note: str  # the reason, when ms is None

    def __post_init__(self):
        _require(self.op.strip(), "op", "must not be empty")
        _require(self.provider.strip(), "provider", "must not be empty")
        _require(self.ms is None or self.ms > 0, "ms", f"must be > 0, got {self.ms!r}")
        _require(self.peak_mb is None or self.peak_mb >= 0, "peak_mb", f"must be >= 0, got {self.peak_mb!r}")
        _require(self.ms is not None or self.note.strip(), "note", "must give the reason when ms is null")


@dataclass(frozen=True)
class RecurrentRow(Row):
    family: Literal["recurrent"]
    shape: RecurrentShape


@dataclass(frozen=True)
class ResidualRow(Row):
    family: Literal["residual"]
    shape: ResidualShape


@dataclass(frozen=True)
class DenseRow(Row):
    family: Literal["dense"]
    shape: DenseShape


@dataclass(frozen=True)
class Environment:
    """Where and when the results were taken (recgen.tools.benchmark.environment)."""
    device: str
    torch: str
    triton: str
    date: str

    def __post_init__(self):
        for name in ("device", "torch", "triton"):
            _require(getattr(self, name).strip(), name, "must not be empty")
        # fromisoformat alone would also take "20250131" on newer Pythons; the format is fixed.
        _require(re.fullmatch(r"\d{4}-\d{2}-\d{2}", self.date), "date", f"must be YYYY-MM-DD, got {self.date!r}")
        try:
            datetime.date.fromisoformat(self.date)
        except ValueError:
            _require(False, "date", f"is not a calendar date: {self.date!r}")


@dataclass(frozen=True)
class Report(Environment):
    results: list[RecurrentRow | ResidualRow | DenseRow]

    def __post_init__(self):
        super().__post_init__()
        seen = {}
        for i, row in enumerate(self.results):
            # Two timings of one provider on one case leave the ratio ambiguous.
            first = seen.setdefault((row.family, row.op, row.pass_, row.dtype, row.shape, row.provider), i)
            _require(first == i, f"results[{i}].provider",
                     f"{row.provider!r} already timed this case in results[{first}]")


# ---- from_dict and to_dict: the dataclasses from and to JSON's dicts ------------------------

_NAMES = {str: "a str", int: "an int", float: "a finite number", bool: "a bool", type(None): "null",
          list: "a list", dict: "a dict"}


# get_type_hints evaluates the annotations' strings (this module's `from __future__ import
# annotations`): once per class, not once per row.
_hints = functools.cache(typing.get_type_hints)


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _fail(path: str, expected: str, value) -> typing.NoReturn:
    # A scalar's repr says its JSON type too ('1', 1, 1.0, True); a list or dict is named.
    found = "null" if value is None else f"{value!r:.60}" if isinstance(value, (str, int, float)) \
        else type(value).__name__
    raise ValueError(f"{path or 'top level'}: must be {expected}, got {found}")


def _expected(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(map(_expected, args)))
    return "a dict" if dataclasses.is_dataclass(tp) else _NAMES[origin or tp]


def _is(tp, value) -> bool:
    """Whether `value` has the outer type `tp` (list and dict elements are checked apart)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:  # of the same type: True == 1, but a bool is not the int 1
        return any(type(value) is type(a) and value == a for a in args)
    if origin in (Union, types.UnionType):
        return any(_is(a, value) for a in args)
    if tp is int:  # a bool is an int in Python, not in JSON
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:  # an int is a number too; NaN and infinity are not JSON
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, dict if dataclasses.is_dataclass(tp) else origin or tp)


def _tagged(options: list, value: dict, path: str):
    """Of dataclasses told apart by a Literal field (a row's family), the one `value` names."""
    hints = [_hints(cls) for cls in options]
    tag = next((name for name, tp in hints[0].items() if typing.get_origin(tp) is Literal), None)
    if tag is None:
        raise TypeError(f"{options}: a union of dataclasses needs a Literal field to tell them apart")
    for cls, h in zip(options, hints):
        if tag not in value or _is(h[tag], value[tag]):
            return cls  # (from_dict reports a missing tag)
    _fail(_join(path, tag), _expected(Literal[sum((typing.get_args(h[tag]) for h in hints), ())]), value[tag])


def _convert(tp, value, path: str):
    if not _is(tp, value):
        _fail(path, _expected(tp), value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in args if _is(a, value)]
        return _convert(options[0] if len(options) == 1 else _tagged(options, value, path), value, path)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is list:
        return [_convert(args[0], item, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        return {_convert(args[0], k, _join(path, k)): _convert(args[1], v, _join(path, k)) for k, v in value.items()}
    return value


def from_dict(cls, data, path: str = ""):
    """The dataclass `cls` from JSON's `data`: every key present and known, each value checked
    against its field's annotation (str, int, float, bool, None, Literal, unions, list[...],
    dict[...], dataclasses), then cls's __post_init__ rules. A ValueError names the first bad
    field's JSON path, what it must be and what it is: `results[3].shape.T: must be an int, got
    2.5`. A field `pass_` is the key "pass".

        from_dict(RecurrentShape, {"T": 64, "B": 16, "I": 128, "H": 256})
    """
    if not isinstance(data, dict):
        _fail(path, "a dict", data)
    names = {f.name.removesuffix("_"): f.name for f in dataclasses.fields(cls)}
    # An unknown key is refused, not ignored: a typo ("peak_MB") would otherwise
    # silently drop a column from every comparison.
    bad = [(k, "missing") for k in names if k not in data] + [(k, "unexpected key") for k in data if k not in names]
    if bad:
        raise ValueError(f"{_join(path, bad[0][0])}: {bad[0][1]}")
    hints = _hints(cls)
    values = {name: _convert(hints[name], data[key], _join(path, key)) for key, name in names.items()}
    try:
        return cls(**values)
    except ValueError as error:  # a __post_init__ rule, naming its field within cls
        raise ValueError(_join(path, error)) from None


def to_dict(record) -> dict:
    """from_dict's inverse: `to_dict(from_dict(Report, results)) == results`."""
    return dataclasses.asdict(record, dict_factory=lambda items: {k.removesuffix("_"): v for k, v in items})


def parse(results: dict) -> Report:
    """The typed `Report` of a results dict (ValueError naming the first bad field)."""
    return from_dict(Report, results)


def validate(results: dict) -> None:
    """Raise ValueError naming the first field (e.g. `results[3].shape.T`) that breaks the
    results format described in the module docstring; return None if all is well.

        validate({"device": "cpu", "torch": "2.5", "triton": "3.1", "date": "2025-01-31",
                  "results": []})
    """
    parse(results)


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
    """Compact shape: `T=64 B=16 I=128 H=256` (recurrent), `N=8 C=64 32x32 train` (residual),
    `B=64 784-64-64-784` (dense: the batch, then the features through the stack)."""
    if family == "recurrent":
        return " ".join(f"{key}={shape[key]}" for key in ("T", "B", "I", "H"))
    if family == "dense":
        widths = [shape["I"]] + [shape["H"]] * (shape["layers"] - 1) + [shape["O"]]
        return f"B={shape['B']} " + "-".join(map(str, widths))
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
    report = to_dict(parse(results))  # what is written is what `load` reads back
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{device_slug(results['device'])}_{results['date']}"
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    # allow_nan=False: from_dict already refuses NaN, and NaN is not valid JSON for other readers.
    paths["json"].write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    paths["md"].write_text(to_markdown(results), encoding="utf-8")
    plot_ratios(results, paths["png"])
    return paths


def load(path) -> dict:
    """Read a results JSON file (as written by `write_report`) and validate it."""
    return to_dict(parse(json.loads(Path(path).read_text(encoding="utf-8"))))
