"""The dense family: linear.py (the fused linear + activation layer's forward and backward
launchers, the ops torch.ops.recgen.linear_act, linear_bwd_data and linear_bwd_weight, and the
autograd LinearActFunction)."""
