"""The benchmark grids, in one place: `recgen bench` (recgen/tools/benchmark.py) runs them and the
performance model (recgen/tools/perf_model.py) predicts them. Pure Python, so the model can read
it without importing recgen (whose package imports torch)."""

# The standard grids (the benchmark issue's): recurrent cells with I = H, 1 layer, one direction.
RECURRENT_GRID = dict(op=("lstm", "gru", "rnn_tanh"), T=(64, 512), B=(1, 16, 64, 256),
                      H=(128, 256, 512, 1024), dtype=("bf16", "fp32"))
RESIDUAL_GRID = dict(op=("basicblock_bn", "resnetblock_in"), N=(8, 32), C=(64, 128, 256), S=(32, 64),
                     dtype=("bf16",), train=(True, False))
# --quick on a GPU: the headline points; on the CPU (interpreter): tiny smoke sizes.
QUICK_GPU = {"recurrent": dict(RECURRENT_GRID, T=(512,), B=(16, 64), H=(256, 512), dtype=("bf16",)),
             "residual": dict(RESIDUAL_GRID, N=(8,), C=(128,), S=(64,), train=(True,))}
CPU_GRID = {"recurrent": dict(op=("lstm", "gru", "rnn_tanh"), T=(4,), B=(2,), H=(16,), dtype=("fp32",)),
            "residual": dict(op=("basicblock_bn", "resnetblock_in"), N=(2,), C=(4,), S=(6,), dtype=("fp32",),
                             train=(True, False))}
PASSES = ("fwd", "fwdbwd")
