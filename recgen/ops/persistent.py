"""The persistent multi-program LSTM forward (kernels/lstm_persistent.py): tiles, the
co-residency check, and the launcher.

The mode is chosen in recgen/ops/config.py::recurrence_config. Its grid-wide barrier only
completes if every program of a group runs at the same time, so before a launch the compiled
kernel's occupancy (registers, shared memory and threads per program against the SM's limits,
read from the device, never assumed) must admit the whole grid on the device's SMs; if not,
the launcher runs the streamed single-program kernel instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from recgen.backend import interpreting
from recgen.ops._launch import dot_flags, launch, new_output
from recgen.ops.recurrence import lengths_arg

COLUMNS_PER_PROGRAM = 16  # hidden units per program: tl.dot's minimum N
MAX_BLOCK_B = 64          # batch rows per program; more rows make more groups


@dataclass(frozen=True)
class PersistentPlan:
    block_b: int      # batch rows per program
    block_h: int      # hidden units (of every gate) per program
    block_p: int      # the whole recurrent width, padded: h_{t-1} is read whole
    num_warps: int

    def grid(self, batch: int, hidden: int, directions: int) -> tuple:
        return (triton.cdiv(hidden, self.block_h), directions, triton.cdiv(batch, self.block_b))


def persistent_plan(batch: int, hidden: int) -> PersistentPlan:
    block_b = min(max(16, triton.next_power_of_2(batch)), MAX_BLOCK_B)
    block_p = max(16, triton.next_power_of_2(hidden))
    # The four W_hh slices (4 x block_p x 16) dominate the registers: more warps above H=512.
    return PersistentPlan(block_b, COLUMNS_PER_PROGRAM, block_p, num_warps=4 if block_p <= 512 else 8)


def programs_per_sm(compiled, device: torch.device) -> int:
    """How many programs of a compiled kernel one SM holds at once, from the kernel's
    registers, shared memory and threads against the device's per-SM limits."""
    props = torch.cuda.get_device_properties(device)
    threads = 32 * compiled.metadata.num_warps
    limits = [props.max_threads_per_multi_processor // threads]
    regs_per_sm = getattr(props, "regs_per_multiprocessor", 65536)
    if compiled.n_regs:
        limits.append(regs_per_sm // (compiled.n_regs * threads))
    shared = compiled.metadata.shared
    if shared:
        limits.append(props.shared_memory_per_multiprocessor // shared)
    return max(0, min(limits))


def co_resident(compiled, programs: int, device: torch.device) -> bool:
    """Whether `programs` programs of `compiled` can all be resident on the device at once."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return programs <= sms * programs_per_sm(compiled, device)


def lstm_fwd_persistent(xw, h0, c0, w_hh, lengths, first_reverse, save, plan: PersistentPlan):
    """lstm_fwd (recgen/ops/lstm.py) in the persistent mode, without projection: the same inputs
    and outputs. Returns None, having launched nothing, when the grid cannot be co-resident, or
    while torch.compile traces with fake tensors (no compiled kernel to measure): the caller then
    runs the streamed kernel."""
    from torch._subclasses.fake_tensor import is_fake

    from recgen.kernels.lstm_persistent import _lstm_fwd_persistent_kernel

    if is_fake(xw):
        return None

    T, B, _ = xw.shape
    D, G4, H = w_hh.shape
    grid = plan.grid(B, H, D)
    y = new_output((T, B, D * H), xw.dtype, xw.device)
    gates = new_output((D, T, B, 4 * H), torch.float32, xw.device) if save else None
    c_all = new_output((D, T, B, H), torch.float32, xw.device) if save else None
    h_state = torch.empty((D, 2, B, H), device=xw.device, dtype=torch.float32)
    h_state[:, 0].copy_(h0)
    c_state = c0.to(torch.float32, copy=True).contiguous()
    counters = torch.zeros(D * grid[2], dtype=torch.int32, device=xw.device)
    args = dict(
        xw_ptr=xw, w_hh_ptr=w_hh.contiguous(), lengths_ptr=lengths_arg(lengths, xw), y_ptr=y,
        gates_ptr=gates if save else y, c_ptr=c_all if save else y, h_state_ptr=h_state,
        c_state_ptr=c_state, counter_ptr=counters, T=T, B=B, H=H,
        stride_xt=xw.stride(0), stride_xb=xw.stride(1), stride_yt=y.stride(0), stride_yb=y.stride(1),
        first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, SAVE=bool(save),
        BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, BLOCK_P=plan.block_p, num_warps=plan.num_warps,
        **dot_flags(w_hh.dtype),
    )
    if interpreting():
        # One program at a time: no barrier can complete. One launch per step checks the same
        # per-step code (launches are ordered, so each step sees the previous step's h).
        for s in range(T):
            launch("lstm_fwd_persistent", _lstm_fwd_persistent_kernel, grid, step_begin=s, step_end=s + 1,
                   GRID_SYNC=False, **args)
    else:
        compiled = _lstm_fwd_persistent_kernel.warmup(grid=grid, step_begin=0, step_end=T, GRID_SYNC=True, **args)
        compiled._init_handles()
        if not co_resident(compiled, grid[0] * grid[1] * grid[2], xw.device):
            return None
        launch("lstm_fwd_persistent", _lstm_fwd_persistent_kernel, grid, step_begin=0, step_end=T,
               GRID_SYNC=True, **args)
    return y, h_state[:, T % 2], c_state, gates, c_all, None


def lstm_bwd_persistent(dy, dhn, dcn, gates, c_all, c0, w_hh, lengths, first_reverse, plan: PersistentPlan):
    """lstm_bwd (recgen/ops/lstm.py) in the persistent mode, without projection: the same inputs
    and outputs. Returns None, having launched nothing, where lstm_fwd_persistent would."""
    from torch._subclasses.fake_tensor import is_fake

    from recgen.kernels.lstm_persistent import _lstm_bwd_persistent_kernel

    if is_fake(gates):
        return None
    D, T, B, G4 = gates.shape
    H = G4 // 4
    grid = plan.grid(B, H, D)
    dgates = new_output((D, T, B, 4 * H), torch.float32, gates.device)
    dh_state = torch.empty((D, 2, B, H), device=gates.device, dtype=torch.float32)
    dh_state[:, 0].copy_(dhn)
    dc_state = dcn.to(torch.float32, copy=True).contiguous()
    counters = torch.zeros(D * grid[2], dtype=torch.int32, device=gates.device)
    args = dict(
        dy_ptr=dy, gates_ptr=gates, c_ptr=c_all, c0_ptr=c0.to(torch.float32).contiguous(),
        w_hh_ptr=w_hh.contiguous(), lengths_ptr=lengths_arg(lengths, gates), dgates_ptr=dgates,
        dh_state_ptr=dh_state, dc_state_ptr=dc_state, counter_ptr=counters, T=T, B=B, H=H,
        first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, BLOCK_B=plan.block_b,
        BLOCK_H=plan.block_h, BLOCK_P=plan.block_p, num_warps=plan.num_warps, **dot_flags(w_hh.dtype),
    )
    if interpreting():
        for i in range(T):  # one launch per phase and step (see lstm_fwd_persistent)
            for phase in (1, 2):
                launch("lstm_bwd_persistent", _lstm_bwd_persistent_kernel, grid, step_begin=i, step_end=i + 1,
                       PHASES=phase, GRID_SYNC=False, **args)
    else:
        compiled = _lstm_bwd_persistent_kernel.warmup(grid=grid, step_begin=0, step_end=T, PHASES=3,
                                                      GRID_SYNC=True, **args)
        compiled._init_handles()
        if not co_resident(compiled, grid[0] * grid[1] * grid[2], gates.device):
            return None
        launch("lstm_bwd_persistent", _lstm_bwd_persistent_kernel, grid, step_begin=0, step_end=T,
               PHASES=3, GRID_SYNC=True, **args)
    return dgates, dh_state[:, T % 2], dc_state, None
