"""The convolution family of residual blocks: conv2d.py (the fused forward launcher, the op
torch.ops.recgen.fused_conv2d and its autograd), conv2d_bwd.py (the data- and weight-gradient
launchers and ops), affine.py (the elementwise affine + activation pass, forward and backward),
geometry.py (argument rules and output sizes)."""
