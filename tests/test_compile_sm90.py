"""Compile every kernel for Hopper (sm_90) ahead of time, without a GPU.

The interpreter runs kernels as Python and accepts code the GPU compiler rejects; this test
sends each kernel, in each mode, through Triton's real compiler down to a cubin, so that the
GPU path cannot silently rot on CPU-only CI (running it still needs the GPU: tests marked gpu).
Kernels are decorated for the interpreter once TRITON_INTERPRET=1 is set, so the compilation
runs in a subprocess without it.
"""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

COMPILE = r'''
import importlib, sys
import triton
from recgen.tools.aot_compile import compile_kernel
from recgen.ops.recurrent.persistent import STATE_POINTERS
from recgen.ops.common.tiling import PIPELINE_STAGES

module, name = sys.argv[1], sys.argv[2]
fn = getattr(importlib.import_module(f"recgen.kernels.{module}"), name)
assert isinstance(fn, triton.runtime.JITFunction), type(fn)
io_pointers = None  # recgen.tools.aot_compile.IO_POINTERS: the I/O dtype; the rest float32 state or int32
state_pointers = ()
stages = None  # Triton's default software pipelining
flags = dict(HAS_LENGTHS=True, HAS_PROJ=True, HAS_BIAS=True, RELU=False, SAVE=True, BLOCK_B=16)
variants = [
    ("resident-fp32", "fp32", dict(RESIDENT=True, BLOCK_H=32, BLOCK_P=32, DOT_FP32=True, INPUT_PRECISION="tf32")),
    ("streamed-bf16", "bf16", dict(RESIDENT=False, BLOCK_H=64, BLOCK_P=64, DOT_FP32=False, INPUT_PRECISION="ieee")),
    # The other side of every optional feature: no lengths/proj/bias, relu, nothing saved.
    ("resident-fp16-plain", "fp16", dict(RESIDENT=True, BLOCK_H=64, BLOCK_P=64, DOT_FP32=False,
                                         INPUT_PRECISION="ieee", HAS_LENGTHS=False,
                                         HAS_PROJ=False, HAS_BIAS=False, RELU=True, SAVE=False)),
]
if module == "conv.fwd":
    io_pointers = {"x_ptr", "w_ptr", "res_ptr", "out_ptr"}
    flags = dict(K=3, STRIDE=1, UPSAMPLE=True, REFLECT=True, HAS_IN_CENTRE=True, HAS_IN_SCALE=True,
                 HAS_IN_SHIFT=True, IN_ACT=2, HAS_OUT_SCALE=True, HAS_OUT_SHIFT=True, HAS_RESIDUAL=True, OUT_ACT=1, STATS=True,
                 BLOCK_M=128, BLOCK_CI=32, BLOCK_CO=64)
    variants = [
        ("all-fp32-tf32", "fp32", dict(DOT_FP32=True, INPUT_PRECISION="tf32")),
        ("all-bf16-k7-s2", "bf16", dict(K=7, STRIDE=2, DOT_FP32=False, INPUT_PRECISION="ieee")),
        # No prologue/epilogue terms, no stats, smallest tiles (tl.dot's 16), leaky act_out.
        ("plain-fp16-k1", "fp16", dict(K=1, UPSAMPLE=False, REFLECT=False, HAS_IN_CENTRE=False, HAS_IN_SCALE=False,
                                       HAS_IN_SHIFT=False, IN_ACT=0, HAS_OUT_SCALE=False, HAS_OUT_SHIFT=False, HAS_RESIDUAL=False,
                                       OUT_ACT=2, STATS=False, DOT_FP32=False, INPUT_PRECISION="ieee",
                                       BLOCK_M=16, BLOCK_CI=16, BLOCK_CO=16)),
    ]
if module == "conv.affine":
    io_pointers = {"y_ptr", "res_ptr", "out_ptr", "dout_ptr", "dy_ptr", "dres_ptr"}
    flags = dict(HAS_CENTRE=True, HAS_SCALE=True, HAS_SHIFT=True, HAS_RESIDUAL=True, HAS_DY=True, HAS_DRES=True,
                 HAS_DSCALE=True, HAS_DSHIFT=True, HAS_DCENTRE=True, ACT=2, MASK_FROM_Z=False, BLOCK_P=32,
                 BLOCK_C=128)
    variants = [
        ("all-leaky-fp32", "fp32", {}),
        ("all-leaky-zmask-bf16", "bf16", dict(MASK_FROM_Z=True, BLOCK_P=16, BLOCK_C=64)),
        # No optional terms and no gradient but dy, relu, the smallest tiles the tests force.
        ("plain-relu-fp16", "fp16", dict(HAS_CENTRE=False, HAS_SCALE=False, HAS_SHIFT=False, HAS_RESIDUAL=False,
                                         HAS_DRES=False, HAS_DSCALE=False, HAS_DSHIFT=False, HAS_DCENTRE=False,
                                         ACT=1, BLOCK_P=16, BLOCK_C=4)),
    ]
if module in ("recurrent.lstm_persistent", "recurrent.gru_persistent", "recurrent.rnn_persistent"):
    # The single launch with the barrier at the bench grid's sizes is compiled, with the launchers'
    # own tiles, by tests/test_config_table.py (H 256 and 512, bf16); here the largest size,
    # float32, and the other side of the optional features. (The one-step-per-launch form runs
    # under the interpreter only.)
    variants = [
        # GRU without b_hh, relu RNN (the LSTM kernels have neither flag).
        ("sync-fp32-h1024", "fp32", dict(GRID_SYNC=True, BLOCK_B=16, BLOCK_H=16, BLOCK_P=1024, DOT_FP32=True,
                                         INPUT_PRECISION="tf32", HAS_LENGTHS=False, SAVE=False,
                                         HAS_BIAS=False, RELU=True)),
    ]
    flags = dict(flags, PHASES=3)
    state_pointers = STATE_POINTERS  # the forwards exchange h_t in the weights' dtype
    stages = PIPELINE_STAGES  # as the launcher runs them
if module == "conv.bwd":
    io_pointers = {"dacc_ptr", "w_ptr", "x_ptr", "dx_ptr"}
    flags = dict(K=3, STRIDE=2, UPSAMPLE=True, REFLECT=True, HAS_IN_CENTRE=True, HAS_IN_SCALE=True,
                 HAS_IN_SHIFT=True, IN_ACT=2, BLOCK_P=64, BLOCK_CI=64, BLOCK_CO=64, BLOCK_R=64)
    variants = [
        ("all-fp32-tf32", "fp32", dict(DOT_FP32=True, INPUT_PRECISION="tf32")),
        ("relu-fp16-k7", "fp16", dict(K=7, STRIDE=1, REFLECT=False, HAS_IN_CENTRE=False, HAS_IN_SCALE=False, IN_ACT=1,
                                      DOT_FP32=False, INPUT_PRECISION="ieee")),
        # No prologue, zero padding, K=1, smallest tiles (tl.dot's 16).
        ("plain-bf16-k1", "bf16", dict(K=1, STRIDE=1, UPSAMPLE=False, REFLECT=False, HAS_IN_CENTRE=False,
                                       HAS_IN_SCALE=False,
                                       HAS_IN_SHIFT=False, IN_ACT=0, DOT_FP32=False, INPUT_PRECISION="ieee",
                                       BLOCK_P=16, BLOCK_CI=16, BLOCK_CO=16, BLOCK_R=16)),
    ]
if module == "dense.linear":
    dense_io = {"x_ptr", "w_ptr", "b_ptr", "res_ptr", "out_ptr", "dout_ptr", "dx_ptr", "dres_ptr"}
    io_pointers = dense_io
    if name == "_linear_fwd_kernel":
        flags = dict(HAS_BIAS=True, HAS_RESIDUAL=True, ACT=3, SAVE_SIGN=False, BLOCK_M=128, BLOCK_I=32, BLOCK_O=64)
        variants = [
            ("tanh-fp32-tf32", "fp32", dict(DOT_FP32=True, INPUT_PRECISION="tf32")),
            ("leaky-sign-bf16", "bf16", dict(ACT=2, SAVE_SIGN=True, DOT_FP32=False, INPUT_PRECISION="ieee")),
            # No bias, no residual, no activation, tl.dot's smallest tiles.
            ("plain-fp16", "fp16", dict(HAS_BIAS=False, HAS_RESIDUAL=False, ACT=0, DOT_FP32=False,
                                        INPUT_PRECISION="ieee", BLOCK_M=16, BLOCK_I=16, BLOCK_O=16)),
        ]
    elif name == "_linear_bwd_data_kernel":
        flags = dict(ACT=4, USE_SIGN=False, BLOCK_M=128, BLOCK_I=64, BLOCK_O=32)
        variants = [
            ("sigmoid-fp32-tf32", "fp32", dict(DOT_FP32=True, INPUT_PRECISION="tf32")),
            ("leaky-sign-bf16", "bf16", dict(ACT=2, USE_SIGN=True, DOT_FP32=False, INPUT_PRECISION="ieee")),
            ("plain-fp16", "fp16", dict(ACT=0, DOT_FP32=False, INPUT_PRECISION="ieee", BLOCK_M=16, BLOCK_I=16,
                                        BLOCK_O=16)),
        ]
    else:
        flags = dict(ACT=3, USE_SIGN=False, HAS_DW=True, HAS_DB=True, HAS_DRES=True, BLOCK_O=64, BLOCK_I=64,
                     BLOCK_M=64)
        variants = [
            ("tanh-all-fp32-tf32", "fp32", dict(DOT_FP32=True, INPUT_PRECISION="tf32")),
            # No dW (d residual alone), through the sign bits; then dW alone, relu, tl.dot's smallest tiles.
            ("leaky-sign-dres-bf16", "bf16", dict(ACT=2, USE_SIGN=True, HAS_DW=False, HAS_DB=False,
                                                  DOT_FP32=False, INPUT_PRECISION="ieee")),
            ("relu-dw-fp16", "fp16", dict(ACT=1, HAS_DB=False, HAS_DRES=False, DOT_FP32=False,
                                          INPUT_PRECISION="ieee", BLOCK_O=16, BLOCK_I=16, BLOCK_M=16)),
        ]
for variant, io, overrides in variants:
    extra = {"io_pointers": io_pointers} if io_pointers else {}
    compiled = compile_kernel(fn, {**flags, **overrides}, io, num_stages=stages, state_pointers=state_pointers,
                              **extra)
    print(f"compiled {name} {variant} cubin {len(compiled.asm['cubin'])} bytes")
'''

KERNELS = [("recurrent.lstm", "_lstm_fwd_kernel"), ("recurrent.lstm", "_lstm_bwd_kernel"),
           ("recurrent.gru", "_gru_fwd_kernel"), ("recurrent.gru", "_gru_bwd_kernel"),
           ("recurrent.rnn", "_rnn_fwd_kernel"), ("recurrent.rnn", "_rnn_bwd_kernel"),
           ("recurrent.lstm_persistent", "_lstm_fwd_persistent_kernel"),
           ("recurrent.lstm_persistent", "_lstm_bwd_persistent_kernel"),
           ("recurrent.gru_persistent", "_gru_fwd_persistent_kernel"),
           ("recurrent.gru_persistent", "_gru_bwd_persistent_kernel"),
           ("recurrent.rnn_persistent", "_rnn_fwd_persistent_kernel"),
           ("recurrent.rnn_persistent", "_rnn_bwd_persistent_kernel"),
           ("conv.fwd", "_conv2d_fwd_kernel"), ("conv.bwd", "_conv2d_bwd_data_kernel"),
           ("conv.bwd", "_conv2d_bwd_weight_kernel"), ("conv.affine", "_affine_act_fwd_kernel"),
           ("conv.affine", "_affine_act_bwd_kernel"),
           ("dense.linear", "_linear_fwd_kernel"), ("dense.linear", "_linear_bwd_data_kernel"),
           ("dense.linear", "_linear_bwd_weight_kernel")]


@pytest.mark.parametrize("module,name", KERNELS, ids=[k[1] for k in KERNELS])
def test_kernel_compiles_for_sm90(module, name):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", COMPILE, module, name], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count(f"compiled {name} ") == (1 if "persistent" in name else 3), run.stdout
