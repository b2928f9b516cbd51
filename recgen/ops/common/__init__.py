"""What every op family shares: launching and launch counts (launch.py), the torch.library
registration (library.py), the tiling module (tiling.py: the rule that picks tiles from the
compiled kernels, every family's candidate tiles, the one override, forced_tiles, and the hook a
tile capture installs), and the identity of a compiled kernel (kernel_identity.py: what a launch
compiles to, the tile choices' cache key)."""
