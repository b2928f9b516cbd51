"""The stand-alone scripts of bench/ on the CPU, so they never rot: the step-latency benchmark in
its smoke form (interpreter), and the Hopper resource probe on one small kernel (compiled for
sm_90 without a GPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_kernel_resources_probe_one_kernel(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "kernel_resources.py"), "--kernel", "rnn_fwd",
                          "--dtype", "bf16", "--hidden", "128", "--block-b", "16", "--warps", "4", "--workers", "1",
                          "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "kernel-resources-sm90.json").read_text())
    (row,) = report["rows"]
    assert (row["kernel"], row["H"], row["block_b"], row["num_warps"]) == ("rnn_fwd", 128, 16, 4)
    assert 0 < row["registers"] <= 255 and row["shared_bytes"] > 0
    assert row["programs_per_sm"] >= 1
    # The rule's table: at B=1 one 16-row tile, 8 programs (H=128 in 16-column blocks) fit an H200.
    choice = next(c for c in report["choices"] if c["B"] == 1)
    assert choice["groups"] == 1 and choice["rows_per_step"] == 16 and choice["choice"].startswith("16 rows")
