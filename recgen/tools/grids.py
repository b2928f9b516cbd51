"""The benchmark grids, in one place: `recgen bench` (recgen/tools/benchmark.py) runs them and the
performance model (recgen/tools/perf_model.py) predicts them. Pure Python, so the model can read
it without importing recgen (whose package imports torch)."""

# The standard grids (the benchmark issue's): recurrent cells with I = H, 1 layer, one direction.
RECURRENT_GRID = dict(op=("lstm", "gru", "rnn_tanh"), T=(64, 512), B=(1, 16, 64, 256),
                      H=(128, 256, 512, 1024), dtype=("bf16", "fp32"))
RESIDUAL_GRID = dict(op=("basicblock_bn", "resnetblock_in"), N=(8, 32), C=(64, 128, 256), S=(32, 64),
                     dtype=("bf16",), train=(True, False))
# Dense layers, a tuple of sub-grids (each a product of its keys): op 'mlp' is the seed's stack
# P -> H (relu) -> H (tanh) -> P (no activation), at MNIST's P = 784 and the digits' P = 64;
# op 'linear_relu' is one large layer P -> P followed by relu (the activation torch's
# cuBLASLt epilogue, torch._addmm_activation, also has).
DENSE_GRID = (dict(op=("mlp",), B=(64, 256, 1024, 4096), P=(784, 64), H=(64,), dtype=("bf16", "fp32")),
              dict(op=("linear_relu",), B=(4096,), P=(4096,), H=(4096,), dtype=("bf16", "fp32")))
# --quick on a GPU: the headline points; on the CPU (interpreter): tiny smoke sizes.
QUICK_GPU = {"recurrent": dict(RECURRENT_GRID, T=(512,), B=(16, 64), H=(256, 512), dtype=("bf16",)),
             "residual": dict(RESIDUAL_GRID, N=(8,), C=(128,), S=(64,), train=(True,)),
             "dense": (dict(DENSE_GRID[0], B=(256, 4096), dtype=("bf16",)), dict(DENSE_GRID[1], dtype=("bf16",)))}
CPU_GRID = {"recurrent": dict(op=("lstm", "gru", "rnn_tanh"), T=(4,), B=(2,), H=(16,), dtype=("fp32",)),
            "residual": dict(op=("basicblock_bn", "resnetblock_in"), N=(2,), C=(4,), S=(6,), dtype=("fp32",),
                             train=(True, False)),
            "dense": (dict(op=("mlp",), B=(3,), P=(12,), H=(8,), dtype=("fp32",)),
                      dict(op=("linear_relu",), B=(3,), P=(12,), H=(12,), dtype=("fp32",)))}
FAMILIES = ("recurrent", "residual", "dense")
PASSES = ("fwd", "fwdbwd")
