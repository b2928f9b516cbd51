"""Dense layer kernels, installed as `recgen.kernels.dense`: the fused linear + activation GEMM,
forward and backward (linear.py). Launchers are in recgen/ops/dense."""
