"""The recurrent family: one module per cell (lstm.py, gru.py, rnn.py), each holding its
launchers (single-program and persistent), its torch.library ops and its autograd Function;
modes.py chooses the kernel mode, persistent.py fits and launches the persistent kernels,
shared.py holds the layer layout helpers every cell uses."""
