"""`recgen check` and the benchmark script's smoke run."""

import pathlib
import subprocess
import sys

import torch

import recgen.testing
from recgen.check import run_check
from recgen.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_check_passes_and_prints_one_line_per_op_and_dtype(capsys):
    assert main(["check", "--dtype", "fp32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ops = [ln.split()[0] for ln in lines if ln.endswith("s") and " fp32 " in ln]
    assert ops == ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu", "fused_conv", "res_block", "dense"]
    assert all("PASS" in ln for ln in lines if " fp32 " in ln)
    assert lines[-1] == "all ops passed"
    # Each line says which implementation ran, and that it launched kernels.
    ran = "kernels" if torch.cuda.is_available() else "interpreter"
    checked = [ln for ln in lines if " fp32 " in ln]
    assert checked and all(f"ran: {ran} (" in ln and " 0 launches" not in ln for ln in checked)


def test_check_fails_when_an_error_exceeds_its_tolerance(monkeypatch, capsys):
    _one_op_check(monkeypatch)
    monkeypatch.setitem(recgen.testing.TOLERANCES, torch.float32, 0.0)
    assert not run_check([torch.float32])
    out = capsys.readouterr().out
    assert "FAIL" in out and out.splitlines()[-1] == "FAILURES above"


def test_console_entry_point_exit_status():
    bad = subprocess.run([sys.executable, "-m", "recgen.cli", "check", "--dtype", "fp64"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'fp64'" in bad.stderr


def test_benchmark_suite_smoke():
    """bench/ (pytest-benchmark) runs every case once, so the benchmarks never rot."""
    run = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "bench"), "-q", "--benchmark-disable",
                          "-p", "no:cacheprovider"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1]


def test_recgen_bench_writes_report(tmp_path, capsys):
    """`recgen bench --family recurrent` on this machine: table printed, three files written,
    every provider recorded (timed, or unsupported with a reason)."""
    from recgen.tools.bench_report import load
    assert main(["bench", "--family", "recurrent", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| recurrent | lstm | fwdbwd |" in printed
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".md", ".png"]
    results = load(next(tmp_path.glob("*.json")))
    providers = {r["provider"] for r in results["results"]}
    # On the CPU torch.nn's eager rows are named for what ran: torch's CPU kernels, not cuDNN.
    eager = "cudnn" if torch.cuda.is_available() else "torch"
    assert providers == {"recgen", eager, "compile", "flashrnn", "reference"}
    ran = "kernels" if torch.cuda.is_available() else "interpreter"
    assert all(f"ran: {ran}" in r["note"] for r in results["results"] if r["provider"] == "recgen")
    assert all((r["ms"] is not None) or r["note"] for r in results["results"])
    assert all(r["ms"] is not None for r in results["results"] if r["provider"] == "recgen")
    # FlashRNN's kernels need CUDA (and it may not be installed): a reason, no time.
    flash = [r for r in results["results"] if r["provider"] == "flashrnn"]
    assert flash and all(r["ms"] is None and ("need a GPU" in r["note"] or "not importable" in r["note"])
                         for r in flash), flash


def test_bench_keeps_the_fastest_flashrnn_backend(monkeypatch):
    """`recgen bench` times FlashRNN at each of its CUDA backends and reports the fastest, naming
    the others (with their times or errors); a peer failing everywhere is unsupported with its
    errors. The times are stand-ins (no timing is asserted)."""
    import recgen.tools.benchmark as bench

    class Layer:
        backend = None

    layer = Layer()

    def fake_time(step, rounds, warmup, cuda):
        return step()

    monkeypatch.setattr(bench, "time_step", fake_time)
    times = {"cuda_fused": 2.0, "cuda": 1.5}
    ms, peak, note = bench.time_peer("flashrnn", layer, lambda: (times[layer.backend], 10.0), 1, 0, True)
    assert (ms, peak) == (1.5, 10.0)
    assert note == "fastest FlashRNN backend: cuda (cuda_fused 2.000 ms)"

    def fused_only():
        if layer.backend == "cuda":
            raise RuntimeError("no kernel for this shape\nmore")
        return 3.0, None

    assert bench.time_peer("flashrnn", layer, fused_only, 1, 0, True) == (
        3.0, None, "fastest FlashRNN backend: cuda_fused (flashrnn cuda failed: RuntimeError: no kernel for this shape)")

    def broken():
        raise ValueError("H must be a multiple of 64")

    ms, peak, note = bench.time_peer("flashrnn", layer, broken, 1, 0, True)
    assert ms is None and note.count("failed: ValueError: H must be a multiple of 64") == 2
    # Other peers: one timing, no note.
    assert bench.time_peer("compile", object(), lambda: (4.0, 1.0), 1, 0, True) == (4.0, 1.0, "")


def test_python_dash_m_recgen_is_the_cli_with_version_and_examples():
    version = subprocess.run([sys.executable, "-m", "recgen", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"recgen {recgen.__version__}"
    for command in ("check", "bench", "train", "sample"):
        helped = subprocess.run([sys.executable, "-m", "recgen", command, "--help"], capture_output=True,
                                text=True)
        assert helped.returncode == 0 and f"example: recgen {command}" in helped.stdout, helped.stderr


def test_missing_extra_is_one_line_naming_it():
    """With tqdm unimportable, `recgen train` says which extra to install, no traceback."""
    code = ("import sys\n"
            "import importlib.util\n"
            "real = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda name, *a: None if name == 'tqdm' else real(name, *a)\n"
            "from recgen.cli import main\n"
            "sys.exit(main(['train', '--model', 'row-lstm', '--epochs', '1']))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "recgen train: needs the 'train' extra (missing: tqdm); install it with: pip install \"recgen[train]\""]


def test_provider_takes_a_comma_list_and_always_times_the_baseline(monkeypatch):
    import recgen.tools.benchmark as bench
    seen = {}

    def fake_run(families, quick, providers):
        seen["providers"] = providers
        return {"device": "cpu", "torch": "x", "triton": "x", "date": "2026-12-01", "results": []}

    monkeypatch.setattr(bench, "run", fake_run)
    monkeypatch.setattr("recgen.tools.bench_report.write_report", lambda results, out: {})
    assert main(["bench", "--provider", "recgen,torch", "--provider", "reference"]) == 0
    assert seen["providers"] == ("recgen", "cudnn", "reference")
    assert main(["bench", "--provider", "reference"]) == 0
    assert seen["providers"] == ("recgen", "reference")
    bad = subprocess.run([sys.executable, "-m", "recgen", "bench", "--provider", "recgen,cuda"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown provider(s) 'cuda'" in bad.stderr


def _one_op_check(monkeypatch):
    """recgen check reduced to one recurrence on one shape (T=4, B=17 over two tiles, H=8, with
    lengths and the reverse direction), so forced modes are checked in seconds."""
    import recgen.check as check
    monkeypatch.setattr(check, "OPS", [("rnn_tanh", "rnn_tanh", 0)])
    monkeypatch.setattr(check, "SHAPES", check.SHAPES[2:])
    every = check.checks
    monkeypatch.setattr(check, "checks", lambda modes=("auto",): [c for c in every(modes) if c[0].startswith("rnn")])


def test_check_forces_each_recurrence_mode(monkeypatch, capsys):
    _one_op_check(monkeypatch)
    assert run_check([torch.float32], modes=("auto", "streamed", "persistent"))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " fp32 " in ln]
    assert [ln.split()[0] for ln in lines][:3] == ["rnn_tanh", "rnn_tanh[streamed]", "rnn_tanh[persistent]"]
    assert all("PASS" in ln and " 0 launches" not in ln for ln in lines[:3])


def test_a_persistent_line_fails_when_the_persistent_kernels_did_not_run(monkeypatch, capsys):
    """A plan the device cannot hold falls back to the single-program kernels: correct outputs,
    but the persistent mode was not checked, so the line fails."""
    import recgen.ops.recurrent.rnn as rnn_ops
    _one_op_check(monkeypatch)
    monkeypatch.setattr(rnn_ops, "run_persistent", lambda *args, **kwargs: False)
    assert not run_check([torch.float32], modes=("persistent",))
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("rnn_tanh[persistent]"))
    assert "FAIL" in line and "(0 launches)" in line
