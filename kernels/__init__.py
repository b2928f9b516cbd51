"""Triton kernels of recgen, installed as `recgen.kernels`. Only @triton.jit code lives here;
launchers are in recgen/ops. Importing this package imports triton."""
