"""Residual conv block kernels, installed as `recgen.kernels.conv`: the fused convolution's forward
(fwd.py) and backward (bwd.py) on the index arithmetic of index.py, and the affine + activation pass
(affine.py). Launchers are in recgen/ops."""
