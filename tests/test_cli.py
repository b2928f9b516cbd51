"""`recgen check` and the benchmark script's smoke run."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest
import torch

import recgen.testing
from recgen.check import run_check
from recgen.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_check_passes_and_prints_one_line_per_op_and_dtype(capsys):
    assert main(["check", "--dtype", "fp32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ops = [ln.split()[0] for ln in lines if ln.endswith("s") and " fp32 " in ln]
    assert ops == ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu", "fused_conv", "res_block"]
    assert all("PASS" in ln for ln in lines if " fp32 " in ln)
    assert lines[-1] == "all ops passed"


def test_check_fails_when_an_error_exceeds_its_tolerance(monkeypatch, capsys):
    monkeypatch.setitem(recgen.testing.TOLERANCES, torch.float32, 0.0)
    assert not run_check([torch.float32])
    out = capsys.readouterr().out
    assert "FAIL" in out and out.splitlines()[-1] == "FAILURES above"


def test_console_entry_point_exit_status():
    bad = subprocess.run([sys.executable, "-m", "recgen.cli", "check", "--dtype", "fp64"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'fp64'" in bad.stderr


@pytest.mark.parametrize("script,rows", [("lstm_vs_cudnn", 2), ("residual_vs_cudnn", 4)])
def test_benchmark_script_smoke(script, rows, capsys, tmp_path):
    """The benchmark scripts run end to end (tiny sizes on the CPU) so they never rot."""
    spec = importlib.util.spec_from_file_location(script, ROOT / "bench" / f"{script}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out_file = tmp_path / "r.jsonl"
    assert bench.main(["--quick", "--out", str(out_file)]) == 0
    assert "not kernel speed" in capsys.readouterr().out
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(records) == rows and all(r["ms"] > 0 and r["torch"] == torch.__version__ for r in records)
