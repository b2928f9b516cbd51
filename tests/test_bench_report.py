"""The benchmark report: format checks (each malformed field is named), ratio arithmetic,
markdown content, the three files `write_report` writes, and the PNGs, on small synthetic
results (no benchmark is run)."""

import copy
import dataclasses
import json
import math
import re
import subprocess
import sys
import typing

import pytest

from recgen.tools import bench_report as br

GPU = "NVIDIA H200"
CPU = "cpu (Triton interpreter: not kernel speed)"
LSTM_SHAPE = {"T": 64, "B": 16, "I": 128, "H": 256}
BLOCK_SHAPE = {"N": 8, "C": 64, "H": 32, "W": 32, "train": True}
GRU_SHAPE = {"T": 1, "B": 1, "I": 3, "H": 5}


def row(family, op, pass_, dtype, shape, provider, ms, note="", peak_mb=None):
    return {"family": family, "op": op, "pass": pass_, "dtype": dtype, "shape": dict(shape),
            "provider": provider, "ms": ms, "peak_mb": peak_mb, "note": note}


def make_results(device=GPU):
    """Three cases: an LSTM with three peers (one unsupported), a residual block with only
    cudnn, and a GRU recgen could not run (its peer has a time but no ratio)."""
    lstm = ("recurrent", "lstm", "fwdbwd", "bf16", LSTM_SHAPE)
    block = ("residual", "block", "fwd", "fp16", BLOCK_SHAPE)
    gru = ("recurrent", "gru", "fwd", "fp32", GRU_SHAPE)
    return {
        "device": device, "torch": "2.5.1", "triton": "3.1.0", "date": "2025-01-31",
        "results": [
            row(*lstm, "recgen", 2.0, peak_mb=12.5),
            row(*lstm, "cudnn", 3.0, peak_mb=10.0),
            row(*lstm, "compile", 1.0),
            row(*lstm, "flashrnn", None, note="needs H a multiple of 64"),
            row(*block, "recgen", 4.0),
            row(*block, "cudnn", 5.0),
            row(*gru, "recgen", None, note="no | kernel for T=1"),
            row(*gru, "cudnn", 0.5),
        ],
    }


_DELETE = object()


def _set(path, value):
    """A mutation that sets results[...path...] = value (_DELETE deletes the key)."""
    def mutate(results):
        target = results
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return mutate

# (id, mutation, the field the error must name)
MALFORMED = [
    ("empty-dict", lambda r: r.clear(), "device"),  # the first missing key is named
    ("missing-triton", _set(["triton"], _DELETE), "triton"),
    ("extra-top-key", _set(["host"], "node1"), "host"),
    ("device-not-str", _set(["device"], 123), "device"),
    ("device-empty", _set(["device"], "  "), "device"),
    ("date-format", _set(["date"], "2025/01/31"), "date"),
    ("date-impossible", _set(["date"], "2025-02-30"), "date"),
    ("results-not-list", _set(["results"], {}), "results"),
    ("row-not-dict", _set(["results", 2], "lstm"), "results[2]"),
    ("row-missing-note", _set(["results", 1, "note"], _DELETE), "results[1].note"),
    ("row-extra-key", _set(["results", 0, "gpu"], "h200"), "results[0].gpu"),
    ("family", _set(["results", 0, "family"], "conv"), "results[0].family"),
    ("op-not-str", _set(["results", 0, "op"], 7), "results[0].op"),
    ("pass", _set(["results", 4, "pass"], "bwd"), "results[4].pass"),
    ("dtype", _set(["results", 5, "dtype"], "fp64"), "results[5].dtype"),
    ("shape-not-dict", _set(["results", 0, "shape"], [64, 16]), "results[0].shape"),
    ("recurrent-shape-missing-I", _set(["results", 1, "shape", "I"], _DELETE), "results[1].shape.I"),
    ("residual-shape-with-T", _set(["results", 4, "shape", "T"], 3), "results[4].shape.T"),
    ("residual-shape-missing-train", _set(["results", 5, "shape", "train"], _DELETE),
     "results[5].shape.train"),
    ("shape-zero", _set(["results", 0, "shape", "T"], 0), "results[0].shape.T"),
    ("shape-float", _set(["results", 0, "shape", "B"], 16.0), "results[0].shape.B"),
    ("shape-bool", _set(["results", 0, "shape", "H"], True), "results[0].shape.H"),
    ("train-not-bool", _set(["results", 4, "shape", "train"], 1), "results[4].shape.train"),
    ("provider-empty", _set(["results", 1, "provider"], ""), "results[1].provider"),
    ("ms-str", _set(["results", 1, "ms"], "3.0"), "results[1].ms"),
    ("ms-bool", _set(["results", 1, "ms"], True), "results[1].ms"),
    ("ms-zero", _set(["results", 1, "ms"], 0.0), "results[1].ms"),
    ("ms-nan", _set(["results", 1, "ms"], math.nan), "results[1].ms"),
    ("peak-negative", _set(["results", 0, "peak_mb"], -1.0), "results[0].peak_mb"),
    ("note-none", _set(["results", 0, "note"], None), "results[0].note"),
    ("null-ms-without-reason", _set(["results", 3, "note"], ""), "results[3].note"),
    ("duplicate-provider", lambda r: r["results"].append(copy.deepcopy(r["results"][1])),
     "results[8].provider"),
]


def test_valid_results_pass():
    br.validate(make_results())
    br.validate(make_results(CPU))
    br.validate({"device": GPU, "torch": "2.5.1", "triton": "3.1.0", "date": "2025-01-31", "results": []})


@pytest.mark.parametrize("mutate, field", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_validate_names_the_bad_field(mutate, field):
    results = make_results()
    mutate(results)
    with pytest.raises(ValueError) as err:
        br.validate(results)
    assert str(err.value).startswith(f"{field}: "), str(err.value)


def test_validate_rejects_non_dict():
    with pytest.raises(ValueError, match="must be a dict"):
        br.validate([make_results()])


def test_case_key_ignores_shape_order_and_provider():
    a, b = make_results()["results"][:2]
    b["shape"] = dict(reversed(list(b["shape"].items())))
    assert br.case_key(a) == br.case_key(b)
    assert br.case_key(a) == ("recurrent", "lstm", "fwdbwd", "bf16",
                              (("B", 16), ("H", 256), ("I", 128), ("T", 64)))
    b["dtype"] = "fp16"
    assert br.case_key(a) != br.case_key(b)


def test_ratio_table():
    table = br.ratio_table(make_results())
    assert [(e["op"], e["recgen_ms"]) for e in table] == [("lstm", 2.0), ("block", 4.0), ("gru", None)]
    lstm, block, gru = table
    assert list(lstm["peers"]) == ["cudnn", "compile", "flashrnn"]
    assert lstm["shape"] == LSTM_SHAPE and lstm["pass"] == "fwdbwd" and lstm["dtype"] == "bf16"
    assert lstm["peers"]["cudnn"]["ratio"] == pytest.approx(1.5)
    assert lstm["peers"]["compile"]["ratio"] == pytest.approx(0.5)
    assert lstm["peers"]["flashrnn"] == {"ms": None, "ratio": None, "note": "needs H a multiple of 64"}
    assert block["peers"]["cudnn"]["ratio"] == pytest.approx(1.25)
    assert block["peers"]["compile"] == {"ms": None, "ratio": None, "note": ""}  # no row at all
    assert gru["recgen_note"] == "no | kernel for T=1"
    assert gru["peers"]["cudnn"] == {"ms": 0.5, "ratio": None, "note": ""}


def test_ratio_table_validates():
    results = make_results()
    results["results"][0]["pass"] = "backward"
    with pytest.raises(ValueError, match=re.escape("results[0].pass")):
        br.ratio_table(results)


def test_shape_text():
    assert br.shape_text("recurrent", LSTM_SHAPE) == "T=64 B=16 I=128 H=256"
    assert br.shape_text("residual", BLOCK_SHAPE) == "N=8 C=64 32x32 train"
    assert br.shape_text("residual", {**BLOCK_SHAPE, "W": 16, "train": False}) == "N=8 C=64 32x16 eval"


def _table_rows(md):
    return [line for line in md.splitlines() if line.startswith("|")]


def _cells(line):
    # Split on unescaped pipes only: an escaped "\|" belongs to a note.
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_markdown_content():
    md = br.to_markdown(make_results())
    header = md.splitlines()[0]
    for part in (GPU, "2.5.1", "3.1.0", "2025-01-31"):
        assert part in header
    rows = _table_rows(md)
    assert _cells(rows[0]) == ["family", "op", "pass", "dtype", "shape", "recgen ms [ran]",
                               "cudnn ms (ratio)", "compile ms (ratio)", "flashrnn ms (ratio)"]
    assert len(rows) == 2 + 3
    assert all(len(_cells(r)) == 9 for r in rows)
    lstm, block, gru = (_cells(r) for r in rows[2:])
    assert lstm == ["recurrent", "lstm", "fwdbwd", "bf16", "T=64 B=16 I=128 H=256", "2.000",
                    "3.000 (1.50)", "1.000 (0.50)", "unsupported: needs H a multiple of 64"]
    assert block == ["residual", "block", "fwd", "fp16", "N=8 C=64 32x32 train", "4.000",
                     "5.000 (1.25)", "-", "-"]
    assert gru[5:] == ["unsupported: no \\| kernel for T=1", "0.500", "-", "-"]
    assert "peer time / recgen time" in md
    assert "not kernel speed" not in md


def test_markdown_cpu_warning():
    md = br.to_markdown(make_results(CPU))
    warnings = [line for line in md.splitlines() if "not kernel speed" in line and line.startswith("**")]
    assert len(warnings) == 1 and warnings[0].endswith("**")
    assert "CPU" in warnings[0]


def test_write_report_and_load(tmp_path):
    results = make_results()
    out = tmp_path / "new" / "dir"
    paths = br.write_report(results, out)
    assert set(paths) == {"json", "md", "png"}
    assert {p.name for p in paths.values()} == {f"nvidia-h200_2025-01-31.{ext}" for ext in ("json", "md", "png")}
    assert sorted(out.iterdir()) == sorted(paths.values())
    assert br.load(paths["json"]) == results
    assert paths["md"].read_text() == br.to_markdown(results)
    assert paths["png"].read_bytes().startswith(b"\x89PNG")


def test_write_report_cpu_slug(tmp_path):
    paths = br.write_report(make_results(CPU), tmp_path)
    assert paths["md"].name == "cpu-triton-interpreter-not-kernel-speed_2025-01-31.md"
    assert "not kernel speed" in paths["md"].read_text()


def test_write_report_validates_first(tmp_path):
    results = make_results()
    results["results"][2]["dtype"] = "int8"
    with pytest.raises(ValueError, match=re.escape("results[2].dtype")):
        br.write_report(results, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_rejects_bad_file(tmp_path):
    results = make_results()
    del results["date"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(results))
    with pytest.raises(ValueError, match="^date: missing"):
        br.load(path)


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_ratio_figure():
    fig = br.ratio_figure(make_results())
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    assert GPU in ax.get_title() and "2025-01-31" in ax.get_title()
    # The GRU case has no ratio (recgen could not run it), so only two cases are drawn.
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "lstm fwdbwd bf16 T=64 B=16 I=128 H=256", "block fwd fp16 N=8 C=64 32x32 train"]
    # flashrnn has no ratio anywhere, so no legend entry.
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cudnn", "compile", "parity"]
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in ax.get_lines())
    assert "no comparable results" not in _texts(fig)


def test_plot_ratios(tmp_path):
    path = br.plot_ratios(make_results(), tmp_path / "ratios.png")
    assert path == tmp_path / "ratios.png"
    assert path.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("keep", ["nothing", "recgen-only", "no-ratios"])
def test_plot_ratios_empty(tmp_path, keep):
    results = make_results()
    if keep == "nothing":
        results["results"] = []
    elif keep == "recgen-only":
        results["results"] = [r for r in results["results"] if r["provider"] == "recgen"]
    else:  # peers and recgen present, but never both times for one case: nothing to plot
        results["results"] = [results["results"][i] for i in (3, 6, 7)]
    assert _texts(br.ratio_figure(results)) == ["no comparable results"]
    path = br.plot_ratios(results, tmp_path / "empty.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_import_does_not_load_matplotlib():
    code = "import sys, recgen.tools.bench_report; assert 'matplotlib' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_markdown_labels_recgen_rows_by_what_ran():
    results = make_results()
    first = next(r for r in results["results"] if r["provider"] == "recgen" and r["ms"] is not None)
    first["note"] = "ran: kernels; TF32 off"
    cells = [_cells(r) for r in _table_rows(br.to_markdown(results))[2:]]
    assert any(c[5].endswith(" [kernels]") for c in cells)
    assert sum(c[5].endswith("]") for c in cells) == 1


# ---- the typed record and its generic reader (from_dict) --------------------------------------

@pytest.mark.parametrize("mutate, message", [
    (_set(["results", 2], "lstm"), "results[2]: must be a dict, got 'lstm'"),  # a list element's type
    (_set(["results", 0, "shape", "B"], 16.0), "results[0].shape.B: must be an int, got 16.0"),
    (_set(["results", 4, "shape", "train"], 1), "results[4].shape.train: must be a bool, got 1"),
    (_set(["results", 1, "ms"], "3.0"), "results[1].ms: must be a finite number or null, got '3.0'"),
    (_set(["results", 1, "ms"], math.inf), "results[1].ms: must be a finite number or null, got inf"),
    (_set(["results", 0, "note"], None), "results[0].note: must be a str, got null"),
    (_set(["results", 4, "pass"], "bwd"), "results[4].pass: must be one of ['fwd', 'fwdbwd'], got 'bwd'"),
    (_set(["results", 0, "family"], "conv"),
     "results[0].family: must be one of ['recurrent', 'residual', 'dense'], got 'conv'"),
    (_set(["results", 0, "family"], _DELETE), "results[0].family: missing"),
    (_set(["results", 0, "pass_"], "fwd"), "results[0].pass_: unexpected key"),
    (_set(["results", 6, "shape", "X"], 1), "results[6].shape.X: unexpected key"),
    (_set(["results", 0, "family"], "residual"), "results[0].shape.N: missing"),  # shape follows family
    (_set(["results"], [[]]), "results[0]: must be a dict, got list"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_from_dict_messages_name_path_expected_and_found(mutate, message):
    results = make_results()
    mutate(results)
    with pytest.raises(ValueError) as err:
        br.validate(results)
    assert str(err.value) == message


def test_parse_gives_the_typed_record_and_to_dict_inverts_it():
    results = make_results()
    report = br.parse(results)
    assert isinstance(report, br.Report) and isinstance(report, br.Environment)
    assert [type(r).__name__ for r in report.results[:5]] == ["RecurrentRow"] * 4 + ["ResidualRow"]
    assert report.results[0].shape == br.RecurrentShape(**LSTM_SHAPE) and report.results[0].pass_ == "fwdbwd"
    assert report.results[4].shape == br.ResidualShape(**BLOCK_SHAPE)
    assert br.to_dict(report) == results
    assert list(br.to_dict(report.results[0])) == list(results["results"][0])  # the JSON key order
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.results[0].ms = 1.0


def test_write_report_writes_the_record(tmp_path):
    """The JSON is the dataclasses' dict: keys in the record's order whatever the input's."""
    results = make_results()
    shuffled = {key: results[key] for key in reversed(list(results))}
    shuffled["results"] = [dict(reversed(list(r.items()))) for r in results["results"]]
    path = br.write_report(shuffled, tmp_path)["json"]
    assert path.read_text() == json.dumps(results, indent=2) + "\n"


def test_records_built_directly_keep_the_rules():
    with pytest.raises(ValueError, match=re.escape("T: must be a positive int, got 0")):
        br.RecurrentShape(T=0, B=1, I=1, H=1)
    with pytest.raises(ValueError, match=re.escape("note: must give the reason when ms is null")):
        br.RecurrentRow("recurrent", "lstm", "fwd", "fp32", br.RecurrentShape(1, 1, 1, 1), "cudnn", None, None, " ")
    with pytest.raises(ValueError, match=re.escape("date: is not a calendar date: '2025-02-29'")):
        br.Environment("cpu", "2.5", "3.1", "2025-02-29")


@dataclasses.dataclass(frozen=True)
class _Child:
    x: int


@dataclasses.dataclass(frozen=True)
class _Probe:
    counts: dict[str, int]
    tags: list[typing.Literal["a", "b"]]
    child: typing.Optional[_Child]
    pass_: bool


@pytest.mark.parametrize("change, message", [
    ({"counts": {"a": 1, "b": "2"}}, "counts.b: must be an int, got '2'"),
    ({"tags": ["a", "c"]}, "tags[1]: must be one of ['a', 'b'], got 'c'"),
    ({"tags": "ab"}, "tags: must be a list, got 'ab'"),
    ({"child": {"x": 1.5}}, "child.x: must be an int, got 1.5"),
    ({"child": {}}, "child.x: missing"),
    ({"child": 3}, "child: must be a dict or null, got 3"),
    ({"pass": None}, "pass: must be a bool, got null"),
    ({"extra": 0}, "extra: unexpected key"),
])
def test_from_dict_generic_types(change, message):
    good = {"counts": {"a": 1}, "tags": ["a", "b"], "child": None, "pass": True}
    assert br.from_dict(_Probe, good) == _Probe({"a": 1}, ["a", "b"], None, True)
    assert br.from_dict(_Probe, {**good, "child": {"x": 2}}).child == _Child(2)
    with pytest.raises(ValueError) as err:
        br.from_dict(_Probe, {**good, **change})
    assert str(err.value) == message


# ---- the dense family --------------------------------------------------------------------------

MLP_SHAPE = {"B": 64, "I": 784, "H": 64, "O": 784, "layers": 3}
WIDE_SHAPE = {"B": 4096, "I": 4096, "H": 4096, "O": 4096, "layers": 1}


def make_dense_results():
    """The seed's stack (recgen, torch eager, addmm_activation unsupported in fwd+bwd) and one wide
    relu layer (addmm_activation timed), beside one recurrent case: families mix in one file."""
    mlp = ("dense", "mlp", "fwdbwd", "fp32", MLP_SHAPE)
    wide = ("dense", "linear_relu", "fwd", "bf16", WIDE_SHAPE)
    lstm = ("recurrent", "lstm", "fwd", "bf16", LSTM_SHAPE)
    return {
        "device": GPU, "torch": "2.13.0", "triton": "3.6.0", "date": "2026-12-02",
        "results": [
            row(*mlp, "recgen", 0.5, note="ran: kernels"),
            row(*mlp, "cudnn", 0.75),
            row(*mlp, "addmm_activation", None, note="forward only: torch._addmm_activation has no autograd"),
            row(*wide, "recgen", 2.0),
            row(*wide, "addmm_activation", 1.0),
            row(*lstm, "recgen", 1.0),
            row(*lstm, "cudnn", 3.0),
        ],
    }


def test_dense_rows_parse_to_their_records():
    results = make_dense_results()
    report = br.parse(results)
    assert [type(r).__name__ for r in report.results] == ["DenseRow"] * 5 + ["RecurrentRow"] * 2
    assert report.results[0].shape == br.DenseShape(**MLP_SHAPE)
    assert report.results[3].shape == br.DenseShape(B=4096, I=4096, H=4096, O=4096, layers=1)
    assert br.to_dict(report) == results


@pytest.mark.parametrize("mutate, message", [
    (_set(["results", 0, "shape", "layers"], _DELETE), "results[0].shape.layers: missing"),
    (_set(["results", 1, "shape", "O"], 0), "results[1].shape.O: must be a positive int, got 0"),
    (_set(["results", 3, "shape", "H"], 64), "results[3].shape.H: must equal O=4096 when layers = 1, got 64"),
    (_set(["results", 4, "shape", "layers"], 2.0), "results[4].shape.layers: must be an int, got 2.0"),
    (_set(["results", 0, "shape"], dict(LSTM_SHAPE)), "results[0].shape.O: missing"),  # a recurrent shape
    (_set(["results", 5, "family"], "dense"), "results[5].shape.O: missing"),  # the shape follows the family
    (_set(["results", 1, "shape", "N"], 8), "results[1].shape.N: unexpected key"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_dense_shape_checks(mutate, message):
    results = make_dense_results()
    mutate(results)
    with pytest.raises(ValueError) as err:
        br.validate(results)
    assert str(err.value) == message


def test_dense_shape_text_markdown_and_plot(tmp_path):
    assert br.shape_text("dense", MLP_SHAPE) == "B=64 784-64-64-784"
    assert br.shape_text("dense", WIDE_SHAPE) == "B=4096 4096-4096"
    results = make_dense_results()
    rows = [_cells(r) for r in _table_rows(br.to_markdown(results))]
    assert rows[0][6:] == ["cudnn ms (ratio)", "addmm_activation ms (ratio)"]
    assert rows[2] == ["dense", "mlp", "fwdbwd", "fp32", "B=64 784-64-64-784", "0.500 [kernels]", "0.750 (1.50)",
                       "unsupported: forward only: torch._addmm_activation has no autograd"]
    assert rows[3] == ["dense", "linear_relu", "fwd", "bf16", "B=4096 4096-4096", "2.000", "-", "1.000 (0.50)"]
    ax = br.ratio_figure(results).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "mlp fwdbwd fp32 B=64 784-64-64-784", "linear_relu fwd bf16 B=4096 4096-4096",
        "lstm fwd bf16 T=64 B=16 I=128 H=256"]
    paths = br.write_report(results, tmp_path)
    assert br.load(paths["json"]) == results and paths["png"].read_bytes().startswith(b"\x89PNG")
