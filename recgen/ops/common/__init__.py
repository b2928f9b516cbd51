"""What every op family shares: launching and launch counts (launch.py), the torch.library
registration (library.py), and the tiling module (tiling.py: the rule that picks tiles from the
compiled kernels, every family's candidate tiles, and the one override, forced_tiles)."""
