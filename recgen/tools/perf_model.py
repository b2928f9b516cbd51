"""Count first: FLOPs, bytes and floors of recgen's recurrences on an H200, as predictions.

Pure Python: this module imports neither torch nor triton, so `python recgen/tools/perf_model.py`
prints the tables of docs/performance.md on any machine (importing it as `recgen.tools.perf_model`
goes through recgen/__init__.py, which imports torch; the model itself does not need it).

Glossary: T steps, B batch, I input, H hidden (= the recurrent width P: no projection), G gate
blocks (lstm 4, gru 3, rnn_tanh 1), e bytes per element of the I/O dtype (2 for bf16/fp16, 4 for
fp32); one layer, one direction, as in recgen.tools.benchmark's grid. Passes: 'fwd' (forward only,
under torch.no_grad: the kernels run with SAVE=False) and 'fwdbwd' (forward + backward, the
benchmark's two passes).

What is counted, and where each count comes from:
- flops():             input projection (one GEMM over all steps), recurrence GEMMs
                       (2*B*G*H*H per step), elementwise gate math, and the backward's GEMMs
                       (dh recurrence, dW_hh, dx and dW_ih);
- hbm_bytes():         the bytes that must cross device memory with today's structure: inputs
                       and weights once, intermediates (xw, the float32 saved gates/states,
                       fwdbwd only, the float32 gate gradients) written once and read once;
- kernel_step_bytes(): what one program of kernels/recurrent/{lstm,gru,rnn}.py reads and writes per
                       step, read off the kernels (loads and stores, re-reads included);
- step(): the floor of one time step with today's parallelism (one program per 16-row batch
  tile, each on its own SM: compute at 1/132 of the chip), the floor with the whole chip, and a
  prediction of today's kernels;
- case(): the whole sequence, serial steps plus the parallel GEMMs and glue passes;
- persistent_step(), persistent_table(): the persistent multi-program mode, per step, with the
  plans the launchers chose from the compiled kernels (bench/config_resources.py's `choices`).
Float32 recurrence dots are counted on TF32 tensor cores (tf32=True, torch's default for its
RNNs, which recgen's kernels follow); torch's GEMMs around them at full float32 (its matmul
default).

>>> row = case("lstm", T=512, B=16, I=512, H=512, dtype_bytes=2, pass_="fwd")
>>> round(row["floor_step_us"], 1), row["mode"]
(8.2, 'streamed')
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

# ---- hardware ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hardware:
    """Ceilings of one GPU; docs/performance.md gives the source of every number."""

    name: str
    sms: int                 # multiprocessors
    clock_hz: float          # SM clock under load
    tensor_flops: float      # dense 16-bit matrix products, whole chip, FLOP/s
    fp32_flops: float        # plain float32 FMA on the CUDA cores, whole chip, FLOP/s
    tf32_flops: float        # dense TF32 matrix products (float32 operands), whole chip, FLOP/s
    mufu_per_clock_sm: int   # special-function results (ex2, rcp) per clock per SM
    hbm_bw: float            # device memory, bytes/s counting reads plus writes
    sm_l2_bw: float          # bytes/s one SM pulls from L2 (an assumption, see the notes)
    l2_bytes: int
    regs_per_sm: int         # 32-bit registers
    smem_per_sm: int         # bytes
    smem_per_block: int      # bytes one block may take
    step_latency_s: float    # one dependent global round trip + barrier (an assumption)


H200 = Hardware(
    name="NVIDIA H200 (SXM, 132 SMs)",
    sms=132,                          # KINDS.md: PyTorch reported 132 multiprocessors
    clock_hz=1.98e9,                  # KINDS.md: SM 1980 MHz just after the matrix products
    tensor_flops=790e12,              # KINDS.md: 8192^3 bf16 matmul, 769-798 TFLOP/s measured
    fp32_flops=67e12,                 # H200.md: datasheet lead, not measured here
    tf32_flops=395e12,                # assumption: half the measured bf16 rate (the datasheet's
                                      # dense TF32:BF16 ratio, 494.7:989.4 TFLOP/s), not measured
    mufu_per_clock_sm=16,             # CUDA C++ Programming Guide throughput table, cc 9.0
    hbm_bw=4.3e12,                    # KINDS.md: device-to-device copy, read + write
    sm_l2_bw=64 * 1.98e9,             # assumption: 64 B/clock/SM L2->SM, not measured
    l2_bytes=60 * 10**6,              # KINDS.md: 60 MB
    regs_per_sm=64 * 1024,            # Hopper tuning guide: 64K 32-bit registers per SM
    smem_per_sm=228 * 1024,           # Hopper tuning guide: up to 228 KB per SM
    smem_per_block=227 * 1024,        # Hopper tuning guide: 227 KB per thread block
    step_latency_s=2e-6,              # assumption; measure with a B=1, H=16 kernel
)

# ---- the cells, read off kernels/recurrent/*.py -------------------------------------------------


@dataclass(frozen=True)
class Cell:
    gates: int          # G: gate blocks of W_hh (G*H, H)
    saved_cols: int     # float32 columns saved per (t, b) for the backward (SAVE only), units of H
    grad_cols: int      # float32 gradient columns the backward kernel writes per (t, b), units of H
    ew_flops: tuple     # (fwd, bwd) elementwise FLOPs per (b, h) element, sigmoid/tanh = 4 each
    mufu: tuple         # (fwd, bwd) special-function ops per element: 2 (exp2, rcp) per sigmoid/tanh
    bias_in_kernel: bool  # GRU adds b_hh inside the kernel (b_hn sits inside r * (...))


CELLS = {
    # fwd: 5 activations*4 + c = f*c + i*g (3) + o*tanh(c) (1); saved gates (4H) + c (H).
    # bwd: dm (1) + tanh(c) (4) + dc (5) + d_i, d_f, d_g, d_o (4 each) + dc*f (1).
    "lstm": Cell(gates=4, saved_cols=5, grad_cols=4, ew_flops=(24, 27), mufu=(10, 2),
                 bias_in_kernel=False),
    # fwd: b_hh (3) + x + gh (3) + r*gh_n (1) + 3 activations*4 + (1-z)*n + z*h (4);
    # saved r, z, n, gh_n (4H). bwd: dh (1), dn (5), dz (5), dr (4), dghn (1), dh*z + carry (3);
    # writes dxw (3H) and dghn (H).
    "gru": Cell(gates=3, saved_cols=4, grad_cols=4, ew_flops=(23, 19), mufu=(6, 0),
                bias_in_kernel=True),
    # fwd: tanh (4), the accumulator starts from xw; saved act (H). bwd: dh (1) + dh*(1-a*a) (3).
    "rnn_tanh": Cell(gates=1, saved_cols=1, grad_cols=1, ew_flops=(4, 4), mufu=(2, 0),
                     bias_in_kernel=False),
}
F32 = 4  # the kernels keep state, saved tensors and gradients in float32

# SAVE (kernels/recurrent/*.py): the forward writes the saved columns only when something will be
# differentiated (recgen.ops.common.library.needs_saving), so 'fwd' (no_grad) moves none of them and
# 'fwdbwd' all. Not modelled here (H = P): with proj_size > 0 the LSTM writes m (H) either way,
# since the projection reads it back in the same step.



def _grids():
    """recgen/tools/grids.py, the grids' one home, loaded from its file: importing it as
    recgen.tools.grids would import recgen, and with it torch."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("recgen_bench_grids", Path(__file__).with_name("grids.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The standard grid `recgen bench` runs (I = H), and its passes.
GRID, PASSES = _grids().RECURRENT_GRID, _grids().PASSES
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

# ---- the tiles the launchers choose on an H200 ---------------------------------------------------
# The rule (recgen/ops/common/tiling.py) compiles its candidates and takes the first that spills nothing,
# so a pure-Python model cannot repeat it: it reads the choices the launchers made on the bench
# grid for sm_90 with the GPU machine's Triton (3.6), committed by bench/config_resources.py.

CONFIG_TABLE = (Path(__file__).resolve().parents[2] / "bench" / "results" / "sm90-configs_2026-12-02"
                / "configs-triton3.6.0.json")
MIN_DOT = 16
KERNEL_NAMES = {"lstm": "lstm_fwd", "gru": "gru_fwd", "rnn_tanh": "rnn_fwd"}


@dataclass(frozen=True)
class Mode:
    resident: bool
    block_b: int
    block_h: int
    block_p: int
    num_warps: int
    weight_bytes: int   # padded recurrent weights one program would hold


def _pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return max(MIN_DOT, p)


@functools.lru_cache(maxsize=None)
def chosen_tiles(path: str = str(CONFIG_TABLE)) -> dict:
    """(cell, H, dtype) -> (RESIDENT, BLOCK_B, BLOCK_H, BLOCK_P, num_warps) of the forward
    launched at B=16 on the bench grid (the single-program mode), from the committed capture."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the committed tile capture (bench/config_resources.py) is read from a "
                                "checkout of the repository; an installed wheel does not carry it")
    with open(path) as f:
        report = json.load(f)
    tiles = {}
    for launch in report["launches"]:
        found = re.fullmatch(r"bench (\w+) B=16 I=(\d+) H=\d+ (\w+) fwd", launch["label"])
        if found and launch["name"] == KERNEL_NAMES[found[1]]:
            specs, options = dict(launch["identity"][1]), dict(launch["identity"][2])
            tiles[(found[1], int(found[2]), found[3])] = (specs["RESIDENT"], specs["BLOCK_B"], specs["BLOCK_H"],
                                                         specs["BLOCK_P"], options["num_warps"])
    return tiles


def recurrence_mode(cell: str, hidden: int, dtype_bytes: int) -> Mode:
    """The single-program tiles the launchers choose for `cell` at H = hidden (a bench-grid
    size) on an H200 (chosen_tiles()).

    >>> recurrence_mode("rnn_tanh", 128, 2).resident, recurrence_mode("lstm", 512, 2).resident
    (True, False)
    """
    dtype = {2: "bf16", 4: "fp32"}[dtype_bytes]
    resident, block_b, block_h, block_p, warps = chosen_tiles()[(cell, hidden, dtype)]
    h_pad = _pow2(hidden)
    weight_bytes = CELLS[cell].gates * h_pad * h_pad * dtype_bytes
    return Mode(resident, block_b, block_h, block_p, warps, weight_bytes)


# ---- counts -------------------------------------------------------------------------------------


def _check(cell: str, pass_: str = "fwd") -> Cell:
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; expected one of {tuple(CELLS)}")
    if pass_ not in PASSES:
        raise ValueError(f"unknown pass {pass_!r}; expected one of {PASSES}")
    return CELLS[cell]


def flops(cell: str, T: int, B: int, I: int, H: int, pass_: str) -> dict:
    """FLOPs of one layer and direction on the real (unpadded) sizes; 'total' sums them.

    >>> flops("rnn_tanh", 2, 1, 3, 4, "fwd")["recurrence_gemm"]   # 2 steps * 2*1*1*4*4
    64
    """
    c = _check(cell, pass_)
    G = c.gates
    out = {"projection": 2 * T * B * I * G * H,
           "recurrence_gemm": 2 * T * B * G * H * H,
           "elementwise": T * B * H * c.ew_flops[0]}
    if pass_ == "fwdbwd":
        out.update(bwd_recurrence_gemm=2 * T * B * G * H * H,      # dh_{t-1} = dgates W_hh, serial
                   bwd_elementwise=T * B * H * c.ew_flops[1],
                   dw_hh=2 * T * B * G * H * H,                    # one GEMM over all steps
                   projection_bwd=2 * 2 * T * B * I * G * H)       # dx and dW_ih
    out["total"] = sum(out.values())
    return out


def hbm_bytes(cell: str, T: int, B: int, I: int, H: int, dtype_bytes: int, pass_: str,
              bias: bool = True) -> dict:
    """Bytes that must cross device memory with today's structure (projection GEMM, one
    recurrence launch, GEMMs for the gradients): inputs and weights once, each intermediate
    written once and read once; re-reads, casts and glue are left to the prediction.

    >>> hbm_bytes("rnn_tanh", 2, 1, 4, 4, 2, "fwd")["total"]
    136
    """
    c = _check(cell, pass_)
    e, G = dtype_bytes, c.gates
    out = {"x": T * B * I * e, "w_ih": G * H * I * e, "bias": (G * H * e if bias else 0),
           "w_hh": G * H * H * e,                      # once: resident, or L2 keeps it (see l2)
           "xw": 2 * T * B * G * H * e,                # written by the GEMM, read by the kernel
           "y": T * B * H * e,
           "saved": 0}                                 # written for the backward: fwdbwd only
    if pass_ == "fwdbwd":
        out.update(saved=T * B * c.saved_cols * H * F32,
                   dy=T * B * H * e,
                   saved_read=T * B * c.saved_cols * H * F32,
                   h_prev=T * B * H * e,               # y again, for dW_hh
                   dgates=2 * T * B * c.grad_cols * H * F32,
                   x_bwd=T * B * I * e,                # x again, for dW_ih
                   dx=T * B * I * e,
                   dw=(G * H * I + G * H * H) * e)
    out["total"] = sum(out.values())
    return out


def kernel_step_bytes(cell: str, H: int, dtype_bytes: int, direction: str, rows: int,
                      save: bool = False) -> dict:
    """Bytes one program of today's kernel moves per time step, read off kernels/recurrent/*.py.

    rows: live batch rows of the program (masked rows move nothing); save: the forward's SAVE
    (True in the forward of a pass that differentiates, False under no_grad). 'io' is the must-move
    part (xw/dy in, y/saved/gradients out), 'state' the float32 scratch traffic and re-reads
    (h or dh slots, c, tiles re-read once per output block), 'weights' the W_hh tiles a
    streamed kernel reads from L2 every step (0 when resident), 'params' b_hh (GRU).
    """
    c = _check(cell)
    if direction not in ("fwd", "bwd"):
        raise ValueError(f"unknown direction {direction!r}; expected 'fwd' or 'bwd'")
    e, G = dtype_bytes, c.gates
    mode = recurrence_mode(cell, H, e)
    n_h, n_p = math.ceil(H / mode.block_h), math.ceil(H / mode.block_p)
    weights = 0 if mode.resident else G * H * H * e
    params = G * H * e if (c.bias_in_kernel and direction == "fwd") else 0
    if direction == "fwd":
        # xw in, y out, saved out (SAVE only); h_{t-1} re-read for every block of gate columns,
        # the old h for the padding rows, the new h into the other slot; the LSTM's c slot.
        io = G * H * e + H * e + (c.saved_cols * H * F32 if save else 0)
        state = H * F32 * n_h + 2 * H * F32 + (2 * H * F32 if cell == "lstm" else 0)
    elif cell == "lstm":
        # phase 1: dy, dh carry, gates (4H), c, c_{t-1}, dc slot (read + write), dgates out;
        # phase 2: dgates re-read for every block of dh columns, carry, dh_{t-1} out.
        io = H * e + 4 * H * F32 + H * F32 + 4 * H * F32
        state = H * F32 + H * F32 + 2 * H * F32 + 4 * H * F32 * n_p + 2 * H * F32
    elif cell == "gru":
        # phase 1: dy, dh carry, saved (4H), h_{t-1} (I/O dtype), dxw (3H) and dghn out;
        # phase 2: dxw_r, dxw_z, dghn re-read per block, carry, dy again, z, dh_{t-1} out.
        io = H * e + 4 * H * F32 + H * e + 4 * H * F32
        state = H * F32 + 3 * H * F32 * n_p + H * F32 + H * e + H * F32 + H * F32
    else:
        # phase 1: dy, dh carry, act, dpre out; phase 2: dpre re-read per block, carry, dh out.
        io = H * e + H * F32 + H * F32
        state = H * F32 + H * F32 * n_p + 2 * H * F32
    return {"io": io * rows, "state": state * rows, "weights": weights, "params": params,
            "total": (io + state) * rows + weights + params}


# ---- one time step ------------------------------------------------------------------------------


def _matrix_rate(dtype_bytes: int, hw: Hardware, tf32: bool = False) -> float:
    """Chip FLOP/s of a matrix product: tensor cores for 16-bit operands; for float32, TF32
    tensor cores when allowed, else CUDA-core FMA. recgen's recurrence follows torch's flag for
    its RNNs (TF32 by default: recgen.ops.common.launch.torch_allows_tf32); torch's matmuls (the input
    projection, the weight gradients) are full float32 by default."""
    if dtype_bytes == 2:
        return hw.tensor_flops
    return hw.tf32_flops if tf32 else hw.fp32_flops


def step(cell: str, B: int, H: int, dtype_bytes: int, direction: str = "fwd",
         hw: Hardware = H200, save: bool = False, tf32: bool = True) -> dict:
    """Seconds per time step: the floor with today's parallelism, the whole-chip floor, and
    the prediction for today's kernel (see docs/performance.md for the formulas). save: the
    forward writes the saved tensors (the forward of 'fwdbwd'; not under no_grad). tf32: float32
    recurrence dots on TF32 tensor cores (torch's default for its RNNs, which recgen follows).

    floor_s = max(compute of one program on one SM, its must-move bytes at one SM's L2
    bandwidth, round trips * step latency). Today's kernels run one program per 16-row batch
    tile; at B <= 16 that is one SM, and with B <= 256 at most 16 programs, each on its own SM.
    """
    c = _check(cell)
    e, G = dtype_bytes, c.gates
    mode = recurrence_mode(cell, H, e)
    k = 0 if direction == "fwd" else 1
    round_trips = 1 if direction == "fwd" else 2   # the backward also round-trips its dgates
    programs = math.ceil(B / mode.block_b)
    rows = min(B, mode.block_b)
    h_eff = math.ceil(H / mode.block_h) * mode.block_h   # tiles are computed whole, masked or not
    p_eff = math.ceil(H / mode.block_p) * mode.block_p
    tile = mode.block_b
    sm_matrix = _matrix_rate(e, hw, tf32) / hw.sms
    sm_fp32 = hw.fp32_flops / hw.sms
    sm_mufu = hw.mufu_per_clock_sm * hw.clock_hz
    mma_s = 2 * tile * G * h_eff * p_eff / sm_matrix
    ew_s = max(tile * h_eff * c.ew_flops[k] / sm_fp32, tile * h_eff * c.mufu[k] / sm_mufu)
    b = kernel_step_bytes(cell, H, e, direction, rows, save)
    io_s = b["io"] / hw.sm_l2_bw
    latency_s = round_trips * hw.step_latency_s
    floor_s = max(mma_s + ew_s, io_s, latency_s)
    bound = ("compute" if floor_s == mma_s + ew_s else "io" if floor_s == io_s else "latency")
    # Whole chip: the step's GEMM on rows padded to 16 spread over every SM, weights held on
    # chip across SMs (they fit: 132 SMs hold ~60 MB), must-move bytes at HBM bandwidth.
    b_pad = math.ceil(B / MIN_DOT) * MIN_DOT
    chip_s = max(2 * b_pad * G * H * H / _matrix_rate(e, hw, tf32)
                 + max(b_pad * H * c.ew_flops[k] / hw.fp32_flops,
                       b_pad * H * c.mufu[k] / (sm_mufu * hw.sms)),
                 programs * b["io"] / hw.hbm_bw, latency_s)
    # Today: the barrier-closed round trips, then the k loop (streamed weight tiles from L2
    # overlapping the MMAs, num_stages pipelining), the gate math, and the remaining traffic.
    weights_s = (b["weights"] + b["params"]) / hw.sm_l2_bw
    state_s = b["state"] / hw.sm_l2_bw
    today_s = latency_s + max(mma_s, weights_s) + ew_s + io_s + state_s
    return {"mode": "resident" if mode.resident else "streamed", "programs": programs,
            "mma_s": mma_s, "elementwise_s": ew_s, "io_s": io_s, "latency_s": latency_s,
            "weights_s": weights_s, "state_s": state_s, "floor_s": floor_s, "bound": bound,
            "chip_floor_s": chip_s, "today_s": today_s, "bytes": b}


# ---- the whole sequence -------------------------------------------------------------------------


def _kernel(flop: float, nbytes: float, rate: float, hw: Hardware) -> float:
    """A parallel kernel (GEMM or elementwise pass) at the chip's ceilings."""
    return max(flop / rate, nbytes / hw.hbm_bw)


def parallel_parts(cell: str, T: int, B: int, I: int, H: int, dtype_bytes: int, pass_: str,
                   hw: Hardware = H200) -> dict:
    """(floor seconds, today seconds) of each kernel outside the recurrence launches."""
    c = _check(cell, pass_)
    e, G, TB = dtype_bytes, c.gates, T * B
    rate = _matrix_rate(e, hw)   # torch's GEMMs: tensor cores for 16-bit, no TF32 by default (matmul flag)
    proj = _kernel(2 * TB * I * G * H, (TB * I + G * H * I + G * H + TB * G * H) * e, rate, hw)
    parts = {"projection": (proj, proj)}
    if pass_ == "fwdbwd":
        gc = c.grad_cols
        # The benchmark's loss y.float().sum() and its gradient cast back: glue, not floor.
        parts["loss_glue"] = (0.0, _kernel(TB * H, TB * H * (e + F32 + F32 + e), hw.fp32_flops, hw))
        # h_{t-1} for dW_hh: a cat of h0 and y (the RNN's float32 act), then a float32 copy.
        src = F32 if cell == "rnn_tanh" else e
        upcast = TB * H * (src + F32) if src != F32 else 0
        parts["h_prev_glue"] = (0.0, _kernel(0, TB * H * 2 * src + upcast, hw.fp32_flops, hw))
        # dW_hh = dgates^T h_prev: float32 operands today (torch: float32 FMA, no TF32).
        dw_bytes = TB * gc * H * F32 + TB * H * F32 + G * H * H * F32
        parts["dw_hh"] = (_kernel(2 * TB * G * H * H, TB * gc * H * F32 + TB * H * e + G * H * H * e, rate, hw),
                          _kernel(2 * TB * G * H * H, dw_bytes, hw.fp32_flops, hw))
        # The float32 gate gradient cast to the I/O dtype for F.linear's backward (not for fp32).
        parts["dgates_cast"] = (0.0, 0.0 if e == F32 else _kernel(0, TB * G * H * (F32 + e), hw.fp32_flops, hw))
        dx = _kernel(2 * TB * G * H * I, (TB * G * H + G * H * I + TB * I) * e, rate, hw)
        dw = _kernel(2 * TB * G * H * I, (TB * G * H + TB * I + G * H * I) * e, rate, hw)
        db = _kernel(TB * G * H, TB * G * H * e, hw.fp32_flops, hw)
        parts["projection_bwd"] = (dx + dw, dx + dw + db)
    return parts


def case(cell: str, T: int, B: int, I: int, H: int, dtype_bytes: int, pass_: str,
         hw: Hardware = H200, tf32: bool = True) -> dict:
    """One row: counts, per-step floors and prediction, whole-sequence floor and prediction
    (tf32: as in step())."""
    c = _check(cell, pass_)
    fwd = step(cell, B, H, dtype_bytes, "fwd", hw, save=pass_ == "fwdbwd", tf32=tf32)
    steps = [fwd] + ([step(cell, B, H, dtype_bytes, "bwd", hw, tf32=tf32)] if pass_ == "fwdbwd" else [])
    parts = parallel_parts(cell, T, B, I, H, dtype_bytes, pass_, hw)
    mode = recurrence_mode(cell, H, dtype_bytes)
    # A resident program loads its weights once per launch; a streamed one re-reads them (L2).
    preload = len(steps) * (mode.weight_bytes / hw.sm_l2_bw if mode.resident else 0.0)
    serial_floor = T * sum(s["floor_s"] for s in steps)
    serial_chip = T * sum(s["chip_floor_s"] for s in steps)
    serial_today = T * sum(s["today_s"] for s in steps) + preload
    par_floor = sum(f for f, _ in parts.values())
    par_today = sum(t for _, t in parts.values())
    fl = flops(cell, T, B, I, H, pass_)
    hb = hbm_bytes(cell, T, B, I, H, dtype_bytes, pass_)
    return {
        "cell": cell, "T": T, "B": B, "I": I, "H": H, "dtype_bytes": dtype_bytes, "pass": pass_,
        "mode": fwd["mode"], "programs": fwd["programs"], "weight_bytes": c.gates * H * H * dtype_bytes,
        "flops": fl["total"], "hbm_bytes": hb["total"],
        "l2_weight_bytes": T * fwd["programs"] * len(steps) * fwd["bytes"]["weights"],
        "floor_step_us": fwd["floor_s"] * 1e6, "today_step_us": fwd["today_s"] * 1e6,
        "chip_floor_step_us": fwd["chip_floor_s"] * 1e6, "bound": fwd["bound"],
        "bwd_floor_step_us": steps[-1]["floor_s"] * 1e6 if pass_ == "fwdbwd" else None,
        "bwd_today_step_us": steps[-1]["today_s"] * 1e6 if pass_ == "fwdbwd" else None,
        "floor_ms": (serial_floor + par_floor) * 1e3,
        "chip_floor_ms": (serial_chip + par_floor) * 1e3,
        "today_ms": (serial_today + par_today) * 1e3,
        "parallel_today_ms": par_today * 1e3,
    }


# ---- the persistent mode (recgen/ops/persistent.py) ----------------------------------------------


def persistent_step(cell: str, H: int, dtype_bytes: int, direction: str, rows: int, columns: int,
                    hw: Hardware = H200, save: bool = False, tf32: bool = True) -> dict:
    """Seconds per step of one program of the persistent mode, read off kernels/recurrent/*_persistent.py:
    it owns `columns` hidden units of every gate and steps through `rows` batch rows (its tiles
    times BLOCK_B, the plan's rows_per_step), W_hh's slice held on chip. Per step it reads the
    whole exchanged row of its rows from L2 (forward: h_{t-1} in the weights' dtype; backward:
    every program's float32 gate gradients, G*H columns), runs its MMA at 1/sms of the chip,
    moves its own columns (xw/y/carries/saved, or dy/saved/gradients) and waits at one grid
    barrier (step_latency_s, the model's assumption, which includes the dependent round trip).
    The parts are added (no overlap), as in step()'s prediction."""
    c = _check(cell)
    if direction not in ("fwd", "bwd"):
        raise ValueError(f"unknown direction {direction!r}; expected 'fwd' or 'bwd'")
    e, G, k = dtype_bytes, c.gates, 0 if direction == "fwd" else 1
    mma_s = 2 * rows * G * columns * H / (_matrix_rate(e, hw, tf32) / hw.sms)
    ew_s = max(rows * columns * c.ew_flops[k] / (hw.fp32_flops / hw.sms),
               rows * columns * c.mufu[k] / (hw.mufu_per_clock_sm * hw.clock_hz))
    lstm = cell == "lstm"
    if direction == "fwd":
        exchange = rows * H * e
        # xw in, y and the exchanged h out, the float32 h carry (and c) read and written, saved.
        own = G * e + 2 * e + 2 * F32 + (2 * F32 if lstm else 0) + (c.saved_cols * F32 if save else 0)
    else:
        exchange = rows * G * H * F32
        # phase 1: dy, dh carry, saved columns, (LSTM c_{t-1} and dc read + write; GRU h_{t-1}),
        # gradients out; phase 2: the carry and dh_{t-1}.
        own = e + F32 + c.saved_cols * F32 + (3 * F32 if lstm else 0) + (e if cell == "gru" else 0) \
            + c.grad_cols * F32 + 2 * F32
    io_s = (exchange + rows * columns * own) / hw.sm_l2_bw
    return {"mma_s": mma_s, "elementwise_s": ew_s, "io_s": io_s, "latency_s": hw.step_latency_s,
            "step_s": hw.step_latency_s + mma_s + ew_s + io_s}


def persistent_table(choices: list, T: int = 512, hw: Hardware = H200) -> str:
    """Predicted time per step, persistent against today's single-program kernels, at the grid
    points of `choices`: the rule's plans per (kernel, dtype, H, B), as bench/config_resources.py
    writes them from the compiled kernels ('dtype' bf16, or tf32: float32 with TF32 dots). One
    line per (cell, dtype, H, B) with both directions' plans known (plan: rows per program and
    step x hidden units per program); the T-step sums count the recurrence launches only (the
    GEMMs around them are the same in both modes: case())."""
    plans = {(ch["kernel"], ch["dtype"], ch["H"], ch["B"]): ch for ch in choices if ch.get("block_h")}
    names = {"lstm": "lstm", "gru": "gru", "rnn_tanh": "rnn"}
    lines = ["| cell | dtype | H | B | fwd plan | bwd plan | fwd µs/step | today fwd | bwd µs/step | today bwd "
             f"| recurrence fwd+bwd T={T} ms | today ms | today / persistent |", "|" + "---|" * 13]
    for cell, dtype, H, B in itertools.product(GRID["op"], ("bf16", "tf32"), GRID["H"], GRID["B"]):
        fwd_plan, bwd_plan = (plans.get((f"{names[cell]}_{d}", dtype, H, B)) for d in ("fwd", "bwd"))
        if fwd_plan is None or bwd_plan is None:
            continue
        e = 2 if dtype == "bf16" else 4
        f = persistent_step(cell, H, e, "fwd", fwd_plan["rows_per_step"], fwd_plan["block_h"], hw, save=True)
        b = persistent_step(cell, H, e, "bwd", bwd_plan["rows_per_step"], bwd_plan["block_h"], hw)
        today_f, today_b = step(cell, B, H, e, "fwd", hw, save=True), step(cell, B, H, e, "bwd", hw)
        ms, today_ms = T * (f["step_s"] + b["step_s"]) * 1e3, T * (today_f["today_s"] + today_b["today_s"]) * 1e3
        lines.append(f"| {cell} | {dtype} | {H} | {B} | {fwd_plan['rows_per_step']}x{fwd_plan['block_h']} "
                     f"| {bwd_plan['rows_per_step']}x{bwd_plan['block_h']} | {_f(f['step_s'] * 1e6)} "
                     f"| {_f(today_f['today_s'] * 1e6)} | {_f(b['step_s'] * 1e6)} | {_f(today_b['today_s'] * 1e6)} "
                     f"| {_f(ms)} | {_f(today_ms)} | {today_ms / ms:.1f} |")
    return "\n".join(lines) + "\n"


# ---- the grid and its tables --------------------------------------------------------------------


def grid_cases():
    """(cell, T, B, I, H, dtype name) over the standard grid, I = H."""
    for cell, T, B, H, dtype in itertools.product(*GRID.values()):
        yield cell, T, B, H, H, dtype


def grid_table(hw: Hardware = H200) -> list:
    """One row per grid case and pass (3 cells * 2 T * 4 B * 4 H * 2 dtypes * 2 passes = 384)."""
    rows = []
    for cell, T, B, I, H, dtype in grid_cases():
        for pass_ in PASSES:
            row = case(cell, T, B, I, H, DTYPE_BYTES[dtype], pass_, hw)
            row["dtype"] = dtype
            rows.append(row)
    return rows


def _f(x: float) -> str:
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def to_markdown(rows=None) -> str:
    """The grid as one markdown line per case: counts, forward step floor vs prediction, and
    whole-sequence floors and predictions for both passes."""
    rows = grid_table() if rows is None else rows
    by_case = {}
    for r in rows:
        by_case.setdefault((r["cell"], r["T"], r["B"], r["H"], r["dtype"]), {})[r["pass"]] = r
    head = ("| cell | T | B | H | dtype | mode | progs | fwd GFLOP | fwd MB | floor/step µs | bound "
            "| today/step µs | today/floor | chip floor/step µs | fwd floor ms | fwd today ms "
            "| fwdbwd floor ms | fwdbwd today ms |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (cell, T, B, H, dtype), p in by_case.items():
        f, fb = p["fwd"], p.get("fwdbwd")
        lines.append(
            f"| {cell} | {T} | {B} | {H} | {dtype} | {f['mode']} | {f['programs']} "
            f"| {_f(f['flops'] / 1e9)} | {_f(f['hbm_bytes'] / 1e6)} | {_f(f['floor_step_us'])} | {f['bound']} "
            f"| {_f(f['today_step_us'])} | {f['today_step_us'] / f['floor_step_us']:.1f} "
            f"| {_f(f['chip_floor_step_us'])} | {_f(f['floor_ms'])} | {_f(f['today_ms'])} "
            f"| {_f(fb['floor_ms']) if fb else '-'} | {_f(fb['today_ms']) if fb else '-'} |")
    return "\n".join(lines) + "\n"


def mode_table(hw: Hardware = H200) -> str:
    """Which grid points run resident vs streamed today, and how many SMs' shared memory the
    weights would need to stay on chip."""
    lines = ["| cell | H | dtype | W_hh bytes (padded) | mode today | SMs to hold W_hh in shared memory |",
             "|---|---|---|---|---|---|"]
    for cell, H, dtype in itertools.product(GRID["op"], GRID["H"], GRID["dtype"]):
        m = recurrence_mode(cell, H, DTYPE_BYTES[dtype])
        sms = math.ceil(m.weight_bytes / hw.smem_per_block)
        lines.append(f"| {cell} | {H} | {dtype} | {m.weight_bytes:,} | "
                     f"{'resident' if m.resident else 'streamed'} | {sms} |")
    return "\n".join(lines) + "\n"


def target_table(T: int = 512, B: int = 16, H: int = 512, hw: Hardware = H200) -> str:
    """The issue's target point: per-step terms of the forward (inference, then saving for the
    backward as in 'fwdbwd') and of the backward, in µs."""
    lines = ["| cell | dtype | dir | MMA | gate math | must-move io | latency | W_hh from L2 | state | "
             "floor | 2x floor | today | chip floor |", "|" + "---|" * 13]
    for cell, dtype in itertools.product(GRID["op"], GRID["dtype"]):
        for d, direction, save in (("fwd", "fwd", False), ("fwd+save", "fwd", True), ("bwd", "bwd", False)):
            s = step(cell, B, H, DTYPE_BYTES[dtype], direction, hw, save)
            us = {k: s[k] * 1e6 for k in ("mma_s", "elementwise_s", "io_s", "latency_s", "weights_s",
                                           "state_s", "floor_s", "today_s", "chip_floor_s")}
            lines.append(f"| {cell} | {dtype} | {d} | {_f(us['mma_s'])} | {_f(us['elementwise_s'])} "
                         f"| {_f(us['io_s'])} | {_f(us['latency_s'])} | {_f(us['weights_s'])} "
                         f"| {_f(us['state_s'])} | {_f(us['floor_s'])} | {_f(2 * us['floor_s'])} "
                         f"| {_f(us['today_s'])} | {_f(us['chip_floor_s'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import json
    import sys

    if len(sys.argv) > 1:  # JSON files with `choices` (bench/config_resources.py): the persistent table
        rules = [ch for path in sys.argv[1:] for ch in json.load(open(path))["choices"]]
        print("## Persistent against today\n\n" + persistent_table(rules))
        sys.exit(0)
    print("## Resident or streamed today\n\n" + mode_table())
    print("## Target point T=512, B=16, H=512 (per step, µs)\n\n" + target_table())
    print("## Grid\n\n" + to_markdown())
