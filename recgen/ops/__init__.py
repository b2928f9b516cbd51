"""Launchers and autograd Functions of the Triton kernels (triton is imported on first launch)."""

from recgen.ops._launch import LAUNCH_COUNTS

__all__ = ["LAUNCH_COUNTS"]
