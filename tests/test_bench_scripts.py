"""The stand-alone scripts of bench/ on the CPU, so they never rot: the step-latency benchmark in
its smoke form (interpreter), and the Hopper resource probe on one small kernel (compiled for
sm_90 without a GPU); and `recgen bench --family dense` on its tiny CPU grid (seconds)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from recgen.ops.common.tiling import SM90_LIMITS

ROOT = Path(__file__).resolve().parents[1]


def test_step_latency_smoke(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "step_latency.py"), "--smoke", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "step-latency.json").read_text())
    rows = report["rows"]
    assert {(r["cell"], r["H"], r["mode"]) for r in rows} == {
        (c, h, m) for c in ("rnn_tanh", "gru", "lstm") for h in (16, 20) for m in ("persistent", "recgen-default")}
    # The persistent rows ran the persistent kernels (the launch counters say so), none fell back.
    assert all(r["note"] == "" for r in rows), [r for r in rows if r["note"]]
    assert all(r["us_per_step"] > 0 for r in rows)
    assert report["device"].startswith("cpu")


def test_kernel_resources_probe_lstm_backward(tmp_path):
    """The LSTM backward at H=512 with 16-row tiles, as the launcher compiles it, fits one H200
    SM: it needed 330 KB of shared memory (more than an SM has) when Triton software-pipelined
    its batch-tile loop, 99 KB without (recgen.ops.common.tiling.PIPELINE_STAGES)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "kernel_resources.py"), "--kernel", "lstm_bwd",
                          "--dtype", "bf16", "--hidden", "512", "--block-b", "16", "--columns", "16", "--workers", "2",
                          "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "kernel-resources-sm90.json").read_text())
    assert sorted((r["kernel"], r["H"], r["block_b"], r["num_warps"]) for r in report["rows"]) == [
        ("lstm_bwd", 512, 16, 4), ("lstm_bwd", 512, 16, 8)]
    for row in report["rows"]:
        assert 0 < row["registers"] <= 255
        assert 0 < row["shared_bytes"] <= SM90_LIMITS["shared_per_block"] and row["programs_per_sm"] >= 1
    # The rule's table: at B <= 64 one 16-row tile of 16 columns per program (32 column blocks per
    # group fit, spill-free: the 8-column candidates, not compiled here, are not needed).
    for choice in report["choices"]:
        if choice["B"] <= 64:
            assert choice["choice"].startswith("16 rows x 1 tiles, 16 columns") and choice["rows_per_step"] == 16, \
                choice


def test_cpu_parity_smoke(tmp_path):
    """bench/cpu_parity.py at tiny sizes, as a CPU user runs recgen (no interpreter): every module
    timed against torch.nn, recgen's side ran torch's op (the script refuses otherwise)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RECGEN_BACKEND")}
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_parity.py"), "--quick", "--rounds", "1",
                          "--warmup", "1", "--out", str(tmp_path)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "cpu_parity.json").read_text())
    assert len(report["rows"]) == 18 and all(r["recgen_implementation"] == "torch" for r in report["rows"])
    assert (tmp_path / "cpu_parity.md").read_text().count("| fwd") == 18
    refused = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_parity.py"), "--out", str(tmp_path)],
                             capture_output=True, text=True, env=dict(env, TRITON_INTERPRET="1"))
    assert refused.returncode == 2 and "unset TRITON_INTERPRET" in refused.stderr


def test_recgen_bench_dense_family(tmp_path, capsys):
    """`recgen bench --family dense` on this machine's grid (the CPU's: the seed's stack and one relu
    layer at tiny sizes): every provider of the family on every case and pass, recgen's rows on its
    fused Linear for every layer, torch._addmm_activation forward only while it has no autograd."""
    from recgen.cli import main
    from recgen.tools import benchmark
    from recgen.tools.bench_report import load
    cuda = torch.cuda.is_available()
    assert main(["bench", "--family", "dense", "--out", str(tmp_path)]) == 0
    assert "| dense | mlp | fwdbwd |" in capsys.readouterr().out
    results = load(next(tmp_path.glob("*.json")))
    rows = {(r["op"], r["pass"], r["provider"]): r for r in results["results"]}
    eager = "cudnn" if cuda else "torch"
    providers = {"recgen", eager, "compile", "addmm_activation", "reference"}
    cases = benchmark.grid("dense", quick=False, cuda=cuda)
    assert len(rows) == len(results["results"]) == len(cases) * 2 * len(providers)
    assert {r["family"] for r in results["results"]} == {"dense"}
    if not cuda:
        assert [c.shape for c in cases] == [{"B": 3, "I": 12, "H": 8, "O": 12, "layers": 3},
                                            {"B": 3, "I": 12, "H": 12, "O": 12, "layers": 1}]
    ran = "kernels" if cuda else "interpreter"
    for (op, pass_, provider), row in rows.items():
        if provider == "recgen":  # every layer, the stack's last (no activation) too, ran recgen's kernels
            assert row["ms"] is not None and row["note"].startswith(f"ran: {ran};"), row
        elif provider == "addmm_activation":
            missing = benchmark.addmm_activation_backward()
            if pass_ == "fwdbwd" and missing:
                assert row["ms"] is None and "no autograd" in row["note"], row
            else:
                assert row["ms"] is not None, row
            assert ("layer 2 (tanh) is addmm + tanh" in row["note"]) == (op == "mlp" and row["ms"] is not None)
        elif provider != "compile" or cuda:
            assert row["ms"] is not None, row
    # A provider none of the chosen families has is refused, before anything runs.
    assert main(["bench", "--family", "recurrent", "--provider", "addmm_activation", "--out", str(tmp_path)]) == 2
    assert "addmm_activation time none of the families recurrent" in capsys.readouterr().err
