"""recgen.tools.perf_model: the counts on hand-computed small cases, the step floors on the issue's
target point, the grid table's coverage, and the resident/streamed rule against
recgen.ops.recurrent.modes.recurrence_config (the one place the kernels' mode is chosen)."""

import doctest
import json
import itertools
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recgen.tools import perf_model as pm

HW = pm.H200
MODULE_FILE = Path(pm.__file__)


# ---- counts on small cases, by hand ----------------------------------------------------------

def test_flops_lstm_by_hand():
    # T=2, B=3, I=5, H=7, G=4
    f = pm.flops("lstm", 2, 3, 5, 7, "fwd")
    assert f["projection"] == 2 * 2 * 3 * 5 * 4 * 7 == 1680
    assert f["recurrence_gemm"] == 2 * (2 * 3 * 4 * 7 * 7) == 2352   # T * 2*B*G*H*H
    assert f["elementwise"] == 2 * 3 * 7 * 24 == 1008
    assert f["total"] == 1680 + 2352 + 1008
    fb = pm.flops("lstm", 2, 3, 5, 7, "fwdbwd")
    assert fb["bwd_recurrence_gemm"] == fb["dw_hh"] == 2352
    assert fb["projection_bwd"] == 2 * 1680
    assert fb["bwd_elementwise"] == 2 * 3 * 7 * 27
    assert fb["total"] == f["total"] + 2352 + 2352 + 3360 + 1134


def test_flops_gru_and_rnn_by_hand():
    # GRU T=1, B=1, I=2, H=3: G=3
    g = pm.flops("gru", 1, 1, 2, 3, "fwd")
    assert (g["projection"], g["recurrence_gemm"], g["elementwise"]) == (2 * 2 * 9, 2 * 3 * 9, 3 * 23)
    r = pm.flops("rnn_tanh", 4, 2, 3, 5, "fwdbwd")
    assert r["projection"] == 2 * 8 * 3 * 5 == 240
    assert r["recurrence_gemm"] == r["bwd_recurrence_gemm"] == r["dw_hh"] == 2 * 8 * 25 == 400
    assert r["projection_bwd"] == 480


def test_hbm_bytes_rnn_by_hand():
    # T=2, B=1, I=H=4, bf16: x 16, W_ih 32, bias 8, W_hh 32, xw written + read 32, y 16; the
    # float32 activations (2*1*4*4 = 32) are saved only when differentiating (SAVE).
    b = pm.hbm_bytes("rnn_tanh", 2, 1, 4, 4, 2, "fwd")
    assert (b["x"], b["w_ih"], b["bias"], b["w_hh"], b["xw"], b["y"], b["saved"]) == (16, 32, 8, 32, 32, 16, 0)
    assert b["total"] == 136
    assert pm.hbm_bytes("rnn_tanh", 2, 1, 4, 4, 2, "fwd", bias=False)["total"] == 128
    fb = pm.hbm_bytes("rnn_tanh", 2, 1, 4, 4, 2, "fwdbwd")
    assert fb["saved"] == fb["saved_read"] == 32


def test_hbm_bytes_lstm_saves_five_float32_columns():
    T, B, I, H = 3, 2, 5, 6
    b = pm.hbm_bytes("lstm", T, B, I, H, 2, "fwdbwd")
    assert b["saved"] == b["saved_read"] == T * B * 5 * H * 4      # gates (4H) + c (H), float32
    assert b["dgates"] == 2 * T * B * 4 * H * 4                    # written once, read once
    assert b["dw"] == (4 * H * I + 4 * H * H) * 2
    assert pm.hbm_bytes("gru", T, B, I, H, 4, "fwdbwd")["saved"] == T * B * 4 * H * 4  # r, z, n, gh_n


def test_fwd_skips_the_saved_tensors_by_hand():
    """SAVE=False under no_grad: the 'fwd' pass writes none of the float32 saved columns, the
    forward of 'fwdbwd' writes them all (LSTM T=2, B=3, I=H=8, bf16, by hand)."""
    T, B, I, H, e = 2, 3, 8, 8, 2
    fwd_only = (T * B * I * e + 4 * H * I * e + 4 * H * e + 4 * H * H * e    # x, W_ih, bias, W_hh
                + 2 * T * B * 4 * H * e + T * B * H * e)                    # xw written + read, y
    assert fwd_only == 96 + 512 + 64 + 512 + 768 + 96 == 2048
    saved = T * B * (4 * H + H) * 4                                         # gates + c, float32
    assert saved == 960
    f = pm.hbm_bytes("lstm", T, B, I, H, e, "fwd")
    assert f["saved"] == 0 and f["total"] == 2048
    fb = pm.hbm_bytes("lstm", T, B, I, H, e, "fwdbwd")
    assert fb["saved"] == fb["saved_read"] == 960
    assert fb["total"] - sum(v for k, v in fb.items() if k not in ("saved", "total")) == 960
    # Per step and program (16 live rows): xw 4H*e + y H*e, plus 5H float32 only when saving.
    rows, H = 16, 512
    k = pm.kernel_step_bytes("lstm", H, e, "fwd", rows)
    ks = pm.kernel_step_bytes("lstm", H, e, "fwd", rows, save=True)
    assert k["io"] == rows * (4 * H * e + H * e) == 81920
    assert ks["io"] == rows * (4 * H * e + H * e + 5 * H * 4) == 245760
    assert (k["state"], k["weights"]) == (ks["state"], ks["weights"])      # only the stores go
    assert pm.kernel_step_bytes("gru", H, e, "fwd", rows, save=True)["io"] - \
        pm.kernel_step_bytes("gru", H, e, "fwd", rows)["io"] == rows * 4 * H * 4   # r, z, n, gh_n
    assert pm.kernel_step_bytes("rnn_tanh", H, e, "bwd", rows, save=True) == \
        pm.kernel_step_bytes("rnn_tanh", H, e, "bwd", rows)                    # backward: no SAVE
    # The step's prediction drops by those bytes at one SM's L2 bandwidth (1.29 µs); the floor,
    # compute-bound, does not move. case() uses save=False for 'fwd', save=True for 'fwdbwd'.
    s, ss = pm.step("lstm", 16, H, e, "fwd"), pm.step("lstm", 16, H, e, "fwd", save=True)
    assert ss["today_s"] - s["today_s"] == pytest.approx(rows * 5 * H * 4 / HW.sm_l2_bw)
    assert (ss["today_s"] - s["today_s"]) * 1e6 == pytest.approx(1.29, abs=0.01)
    assert s["floor_s"] == ss["floor_s"]
    r = pm.case("lstm", 512, 16, H, H, e, "fwd")
    rb = pm.case("lstm", 512, 16, H, H, e, "fwdbwd")
    assert r["today_step_us"] == pytest.approx(s["today_s"] * 1e6)
    assert rb["today_step_us"] == pytest.approx(ss["today_s"] * 1e6)
    assert r["floor_step_us"] == rb["floor_step_us"]


def test_kernel_step_bytes_lstm_streamed_by_hand():
    # H=256 bf16 LSTM: no resident candidate compiles (512 KiB of W_hh > an SM's 256 KiB of
    # registers), so streamed with 64-wide tiles (4 blocks).
    H, e, rows = 256, 2, 16
    assert not pm.recurrence_mode("lstm", H, e).resident and pm.recurrence_mode("lstm", H, e).block_h == 64
    b = pm.kernel_step_bytes("lstm", H, e, "fwd", rows, save=True)
    assert b["weights"] == 4 * H * H * e
    assert b["io"] == rows * (4 * H * e + H * e + 5 * H * 4)
    # h_{t-1} read once per 64-column block (4), old h read, new h written, c read and written.
    assert b["state"] == rows * (H * 4 * 4 + 2 * H * 4 + 2 * H * 4)
    assert b["params"] == 0
    bw = pm.kernel_step_bytes("lstm", H, e, "bwd", rows)
    assert bw["io"] == rows * (H * e + 4 * H * 4 + H * 4 + 4 * H * 4)
    assert bw["state"] == rows * (H * 4 + H * 4 + 2 * H * 4 + 4 * H * 4 * 4 + 2 * H * 4)


def test_kernel_step_bytes_resident_reads_no_weights():
    b = pm.kernel_step_bytes("rnn_tanh", 128, 4, "fwd", 3)   # 64 KiB fp32: resident
    assert b["weights"] == 0
    assert b["state"] == 3 * (128 * 4 * 1 + 2 * 128 * 4)       # one block: h read once
    g = pm.kernel_step_bytes("gru", 256, 2, "fwd", 1)
    assert g["params"] == 3 * 256 * 2                           # b_hh inside the kernel


def test_step_floor_target_point_by_hand():
    # The target: B=16, H=512, bf16 LSTM forward, one program on one SM.
    s = pm.step("lstm", 16, 512, 2, "fwd")
    sm_tensor = HW.tensor_flops / HW.sms
    mma = 2 * 16 * 4 * 512 * 512 / sm_tensor
    mufu = 16 * 512 * 10 / (HW.mufu_per_clock_sm * HW.clock_hz)
    assert s["mma_s"] == pytest.approx(mma)
    assert s["elementwise_s"] == pytest.approx(mufu)              # the special-function unit bounds the gate math
    assert s["floor_s"] == pytest.approx(mma + mufu)
    assert s["floor_s"] * 1e6 == pytest.approx(8.19, abs=0.01)
    assert s["bound"] == "compute" and s["mode"] == "streamed" and s["programs"] == 1
    assert s["weights_s"] == pytest.approx(4 * 512 * 512 * 2 / HW.sm_l2_bw)
    assert s["today_s"] == pytest.approx(HW.step_latency_s + s["weights_s"] + mufu + s["io_s"] + s["state_s"])
    assert s["chip_floor_s"] == pytest.approx(HW.step_latency_s)   # the whole chip: latency-bound


def test_step_latency_and_padding():
    # Tiny sizes are latency-bound; B=1 pads to the same 16-row tile as B=16.
    assert pm.step("rnn_tanh", 1, 128, 2, "fwd")["bound"] == "latency"
    assert pm.step("rnn_tanh", 1, 128, 2, "bwd")["latency_s"] == 2 * HW.step_latency_s
    assert pm.step("gru", 1, 512, 2)["mma_s"] == pm.step("gru", 16, 512, 2)["mma_s"]
    assert pm.step("gru", 256, 512, 2)["programs"] == 16
    # float32 recurrence dots follow torch's RNN flag: TF32 tensor cores by default (half the bf16
    # rate), CUDA-core FMA with TF32 off (790/67 times slower than bf16).
    bf16 = pm.step("lstm", 16, 512, 2)["mma_s"]
    assert pm.step("lstm", 16, 512, 4)["mma_s"] / bf16 == pytest.approx(HW.tensor_flops / HW.tf32_flops)
    assert pm.step("lstm", 16, 512, 4, tf32=False)["mma_s"] / bf16 == pytest.approx(HW.tensor_flops / HW.fp32_flops)
    assert pm.step("lstm", 16, 512, 2, tf32=False)["mma_s"] == bf16  # 16-bit dots: no TF32 question
    full, tf32 = (pm.case("gru", 8, 16, 1024, 1024, 4, "fwd", tf32=flag)["floor_ms"] for flag in (False, True))
    assert full > 3 * tf32  # compute-bound on one SM: the dot rate decides


def test_whole_sequence_adds_up():
    r = pm.case("gru", 64, 16, 256, 256, 2, "fwd")
    par = pm.parallel_parts("gru", 64, 16, 256, 256, 2, "fwd")
    assert r["floor_ms"] == pytest.approx((64 * r["floor_step_us"] * 1e-6 + par["projection"][0]) * 1e3)
    rb = pm.case("gru", 64, 16, 256, 256, 2, "fwdbwd")
    assert rb["floor_ms"] > r["floor_ms"] and rb["today_ms"] > r["today_ms"]


def test_backward_glue_by_dtype():
    # bf16: the float32 gate gradients are cast down and h_prev cast up; fp32 needs neither.
    T, B, H = 8, 4, 32
    bf = pm.parallel_parts("lstm", T, B, H, H, 2, "fwdbwd")
    fp = pm.parallel_parts("lstm", T, B, H, H, 4, "fwdbwd")
    assert bf["dgates_cast"][1] == pytest.approx(T * B * 4 * H * (4 + 2) / HW.hbm_bw)
    assert fp["dgates_cast"] == (0.0, 0.0)
    assert bf["h_prev_glue"][1] == pytest.approx(T * B * H * (2 * 2 + 2 + 4) / HW.hbm_bw)
    assert fp["h_prev_glue"][1] == pytest.approx(T * B * H * 2 * 4 / HW.hbm_bw)
    # dW_hh runs on float32 operands today whatever the dtype; its floor uses the dtype's rate.
    big = pm.parallel_parts("lstm", 512, 256, 1024, 1024, 2, "fwdbwd")["dw_hh"]
    assert big[1] == pytest.approx(2 * 512 * 256 * 4 * 1024 * 1024 / HW.fp32_flops)
    assert big[0] == pytest.approx(2 * 512 * 256 * 4 * 1024 * 1024 / HW.tensor_flops)
    assert set(pm.parallel_parts("gru", T, B, H, H, 2, "fwd")) == {"projection"}


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown cell"):
        pm.flops("lstmx", 1, 1, 1, 1, "fwd")
    with pytest.raises(ValueError, match="unknown pass"):
        pm.case("lstm", 1, 1, 1, 1, 2, "bwd")
    with pytest.raises(ValueError, match="unknown direction"):
        pm.kernel_step_bytes("gru", 8, 2, "sideways", 1)


def test_doctests():
    assert doctest.testmod(pm).failed == 0


def test_imports_neither_torch_nor_triton():
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('perf_model', {str(MODULE_FILE)!r}); "
            "m = importlib.util.module_from_spec(spec); sys.modules['perf_model'] = m; "
            "spec.loader.exec_module(m); "
            "m.grid_table(); print(sorted({'torch', 'triton'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- the grid --------------------------------------------------------------------------------

def test_grid_matches_the_benchmark_grid():
    from recgen.tools import benchmark
    assert pm.GRID == benchmark.RECURRENT_GRID
    assert pm.PASSES == benchmark.PASSES


def test_grid_table_covers_the_whole_grid():
    rows = pm.grid_table()
    keys = {(r["cell"], r["T"], r["B"], r["I"], r["H"], r["dtype"], r["pass"]) for r in rows}
    want = {(c, T, B, H, H, d, p) for c, T, B, H, d in itertools.product(*pm.GRID.values())
            for p in pm.PASSES}
    assert len(rows) == len(keys) == len(want) == 3 * 2 * 4 * 4 * 2 * 2
    assert keys == want
    for r in rows:
        values = [r["flops"], r["hbm_bytes"], r["floor_step_us"], r["today_step_us"], r["floor_ms"],
                  r["today_ms"], r["chip_floor_ms"]]
        assert all(math.isfinite(v) and v > 0 for v in values), r
        assert r["chip_floor_step_us"] <= r["floor_step_us"] + 1e-9, r   # the whole chip is never slower
        assert r["floor_step_us"] <= r["today_step_us"], r                # a floor is a floor
        assert r["floor_ms"] <= r["today_ms"], r


def test_to_markdown_has_one_line_per_case():
    text = pm.to_markdown()
    lines = text.strip().splitlines()
    assert len(lines) == 2 + 3 * 2 * 4 * 4 * 2
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| lstm | 512 | 16 | 512 | bf16 | streamed |" in text


def test_modes_are_the_launchers_choices_under_the_gpus_triton():
    """The model's tiles are what the launchers chose on the bench grid with Triton 3.6
    (bench/config_resources.py), and each is a candidate the rule offers today."""
    from recgen.ops.common.tiling import recurrence_candidates
    names = {"bf16": torch.bfloat16, "fp32": torch.float32}
    for cell, H, dtype in itertools.product(pm.GRID["op"], pm.GRID["H"], pm.GRID["dtype"]):
        mode = pm.recurrence_mode(cell, H, pm.DTYPE_BYTES[dtype])
        offered = {(c["RESIDENT"], c["BLOCK_B"], c["BLOCK_H"], c["BLOCK_P"], c["num_warps"])
                   for c in recurrence_candidates(pm.CELLS[cell].gates, H, H, names[dtype])}
        assert (mode.resident, mode.block_b, mode.block_h, mode.block_p, mode.num_warps) in offered, (cell, H, dtype)
    assert len(pm.chosen_tiles()) == len(pm.GRID["op"]) * len(pm.GRID["H"]) * len(pm.GRID["dtype"])


def test_the_notes_carry_the_generated_tables():
    """docs/performance.md's tables are the module's output: regenerate them when the model changes."""
    notes = (Path(__file__).resolve().parents[1] / "docs" / "performance.md").read_text()
    for table in (pm.mode_table(), pm.target_table(), pm.to_markdown()):
        assert table in notes


# ---- the persistent mode -----------------------------------------------------------------------



def test_persistent_step_by_hand():
    # LSTM bf16 H=512, one 16-row tile, 16 units per program, inference (no saved tensors).
    s = pm.persistent_step("lstm", 512, 2, "fwd", rows=16, columns=16)
    mma = 2 * 16 * 4 * 16 * 512 / (HW.tensor_flops / HW.sms)
    exchange = 16 * 512 * 2                              # h_{t-1}, bf16, every column
    own = 16 * 16 * (4 * 2 + 2 * 2 + 2 * 4 + 2 * 4)     # xw in, y + h out, h and c carries
    assert s["mma_s"] == pytest.approx(mma)
    assert s["io_s"] == pytest.approx((exchange + own) / HW.sm_l2_bw)
    assert s["step_s"] == pytest.approx(HW.step_latency_s + mma + s["elementwise_s"] + s["io_s"])
    # The backward exchanges every program's float32 gate gradients (4H per row).
    b = pm.persistent_step("lstm", 512, 2, "bwd", rows=16, columns=16)
    assert b["io_s"] > 16 * 4 * 512 * 4 / HW.sm_l2_bw
    # Half the units: half the MMA; twice the rows: twice.
    half = pm.persistent_step("lstm", 512, 2, "fwd", rows=16, columns=8)["mma_s"]
    assert half == pytest.approx(mma / 2)
    assert pm.persistent_step("lstm", 512, 2, "fwd", rows=32, columns=16)["mma_s"] == pytest.approx(2 * mma)
    with pytest.raises(ValueError, match="unknown direction"):
        pm.persistent_step("lstm", 512, 2, "up", rows=16, columns=16)


def test_the_notes_carry_the_persistent_table():
    """docs/performance.md's persistent table is the model's output on the plans the launchers
    chose under Triton 3.6 (bench/config_resources.py: H=1024 at B >= 64 not captured; where a
    resident kernel compiles spill-free the persistent mode is not tried, so there is no plan)."""
    choices = json.loads(pm.CONFIG_TABLE.read_text())["choices"]
    table = pm.persistent_table(choices)
    assert len(choices) == 120  # 6 kernels x 2 dtypes x 14 captured points, less 48 resident ones
    assert table.count("\n") == 2 + len(choices) // 2  # header, rule, one line per (fwd, bwd) pair
    assert table in (Path(__file__).resolve().parents[1] / "docs" / "performance.md").read_text()
