"""Timing helpers shared by the benchmark scripts: warm-up outside the timed region (Triton
compiles there), synchronisation around every timed run, medians, and the environment record
(device, torch, triton, date) that goes with every result."""

from __future__ import annotations

import datetime
import statistics
import time

import torch


def median_ms(step, rounds: int, warmup: int, cuda: bool) -> float:
    """Median wall time of `step()` in milliseconds over `rounds` synchronised runs."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(rounds):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_mb(step, cuda: bool):
    """Peak CUDA memory of one `step()` in MiB (None on the CPU)."""
    if not cuda:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def environment(cuda: bool) -> dict:
    import triton
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu (Triton interpreter: not kernel speed)",
        "torch": torch.__version__, "triton": triton.__version__,
        "date": datetime.date.today().isoformat(),
    }
