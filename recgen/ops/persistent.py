"""The persistent multi-program mode (kernels/lstm_persistent.py, kernels/gru_persistent.py,
kernels/rnn_persistent.py): tiles, the co-residency check, and the launchers of the LSTM
(without projection), GRU and Elman RNN forwards and backwards.

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
from recgen.ops.recurrence import lengths_arg, ping_pong_state

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
    needed = ("max_threads_per_multi_processor", "regs_per_multiprocessor", "shared_memory_per_multiprocessor")
    if not all(hasattr(props, name) for name in needed) or not compiled.n_regs:
        return 0  # a limit we cannot read: never assume residency (the caller streams)
    threads = 32 * compiled.metadata.num_warps
    limits = [props.max_threads_per_multi_processor // threads,
              props.regs_per_multiprocessor // (compiled.n_regs * threads)]
    if compiled.metadata.shared:
        limits.append(props.shared_memory_per_multiprocessor // compiled.metadata.shared)
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
    from recgen.kernels.lstm_persistent import _lstm_fwd_persistent_kernel

    T, B, _ = xw.shape
    D, G4, H = w_hh.shape
    grid = plan.grid(B, H, D)
    y = new_output((T, B, D * H), xw.dtype, xw.device)
    gates = new_output((D, T, B, 4 * H), torch.float32, xw.device) if save else None
    c_all = new_output((D, T, B, H), torch.float32, xw.device) if save else None
    h_state = ping_pong_state(h0)
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
    # Under the interpreter (one program at a time, so no barrier could complete) the helper runs
    # one launch per step: launches are ordered, so each step sees the previous step's h.
    if not _run_persistent("lstm_fwd_persistent", _lstm_fwd_persistent_kernel, grid, T, xw.device, args):
        return None
    return y, h_state[:, T % 2], c_state, gates, c_all, None


def lstm_bwd_persistent(dy, dhn, dcn, gates, c_all, c0, w_hh, lengths, first_reverse, plan: PersistentPlan):
    """lstm_bwd (recgen/ops/lstm.py) in the persistent mode, without projection: the same inputs
    and outputs. Returns None, having launched nothing, where lstm_fwd_persistent would."""
    from recgen.kernels.lstm_persistent import _lstm_bwd_persistent_kernel

    D, T, B, G4 = gates.shape
    H = G4 // 4
    grid = plan.grid(B, H, D)
    dgates = new_output((D, T, B, 4 * H), torch.float32, gates.device)
    dh_state = ping_pong_state(dhn)
    dc_state = dcn.to(torch.float32, copy=True).contiguous()
    counters = torch.zeros(D * grid[2], dtype=torch.int32, device=gates.device)
    args = dict(
        dy_ptr=dy, gates_ptr=gates, c_ptr=c_all, c0_ptr=c0.to(torch.float32).contiguous(),
        w_hh_ptr=w_hh.contiguous(), lengths_ptr=lengths_arg(lengths, gates), dgates_ptr=dgates,
        dh_state_ptr=dh_state, dc_state_ptr=dc_state, counter_ptr=counters, T=T, B=B, H=H,
        first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, BLOCK_B=plan.block_b,
        BLOCK_H=plan.block_h, BLOCK_P=plan.block_p, num_warps=plan.num_warps, **dot_flags(w_hh.dtype),
    )
    if not _run_persistent("lstm_bwd_persistent", _lstm_bwd_persistent_kernel, grid, T, gates.device, args,
                           phases=True):
        return None
    return dgates, dh_state[:, T % 2], dc_state, None


def _run_persistent(name, kernel, grid, steps, device, args, phases=False) -> bool:
    """Launch a persistent kernel over `steps` steps: one launch with the grid barrier (PHASES=3
    when `phases`) after checking co-residency, or, under the interpreter, one launch per step
    (and per phase, 1 then 2, when `phases`). Returns False, having launched nothing, when the
    grid cannot be co-resident, or while torch.compile traces with fake tensors (there is no
    compiled kernel to measure; the caller then traces the streamed kernel)."""
    from torch._subclasses.fake_tensor import is_fake

    if any(is_fake(v) for v in args.values()):
        return False
    if interpreting():
        for i in range(steps):  # launches are ordered: each sees the previous one's writes
            for extra in ({"PHASES": 1}, {"PHASES": 2}) if phases else ({},):
                launch(name, kernel, grid, step_begin=i, step_end=i + 1, GRID_SYNC=False, **extra, **args)
        return True
    extra = {"PHASES": 3} if phases else {}
    compiled = kernel.warmup(grid=grid, step_begin=0, step_end=steps, GRID_SYNC=True, **extra, **args)
    compiled._init_handles()
    if not co_resident(compiled, grid[0] * grid[1] * grid[2], device):
        return False
    launch(name, kernel, grid, step_begin=0, step_end=steps, GRID_SYNC=True, **extra, **args)
    return True


def gru_fwd_persistent(xw, h0, w_hh, b_hh, lengths, first_reverse, save, plan: PersistentPlan):
    """gru_fwd (recgen/ops/gru.py) in the persistent mode: the same inputs and outputs. Returns
    None, having launched nothing, where lstm_fwd_persistent would."""
    from recgen.kernels.gru_persistent import _gru_fwd_persistent_kernel

    T, B, _ = xw.shape
    D, G3, H = w_hh.shape
    grid = plan.grid(B, H, D)
    y = new_output((T, B, D * H), xw.dtype, xw.device)
    saved = new_output((D, T, B, 4 * H), torch.float32, xw.device) if save else None
    h_state = ping_pong_state(h0)
    w_hh_c = w_hh.contiguous()
    args = dict(
        xw_ptr=xw, w_hh_ptr=w_hh_c, b_hh_ptr=w_hh_c if b_hh is None else b_hh.contiguous(),
        lengths_ptr=lengths_arg(lengths, xw), y_ptr=y, saved_ptr=saved if save else y, h_state_ptr=h_state,
        counter_ptr=torch.zeros(D * grid[2], dtype=torch.int32, device=xw.device), T=T, B=B, H=H,
        stride_xt=xw.stride(0), stride_xb=xw.stride(1), stride_yt=y.stride(0), stride_yb=y.stride(1),
        first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, HAS_BIAS=b_hh is not None,
        SAVE=bool(save), BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, BLOCK_P=plan.block_p,
        num_warps=plan.num_warps, **dot_flags(w_hh.dtype),
    )
    if not _run_persistent("gru_fwd_persistent", _gru_fwd_persistent_kernel, grid, T, xw.device, args):
        return None
    return y, h_state[:, T % 2], saved


def gru_bwd_persistent(dy, dhn, saved, h_prev, w_hh, lengths, first_reverse, plan: PersistentPlan):
    """gru_bwd (recgen/ops/gru.py) in the persistent mode: the same inputs and outputs (dxw,
    dghn, dh0). Returns None, having launched nothing, where lstm_fwd_persistent would."""
    from recgen.kernels.gru_persistent import _gru_bwd_persistent_kernel

    D, T, B, G4 = saved.shape
    H = G4 // 4
    grid = plan.grid(B, H, D)
    dxw = new_output((D, T, B, 3 * H), torch.float32, saved.device)
    dghn = new_output((D, T, B, H), torch.float32, saved.device)
    dh_state = ping_pong_state(dhn)
    args = dict(
        dy_ptr=dy, saved_ptr=saved, h_prev_ptr=h_prev.contiguous(), w_hh_ptr=w_hh.contiguous(),
        lengths_ptr=lengths_arg(lengths, saved), dxw_ptr=dxw, dghn_ptr=dghn, dh_state_ptr=dh_state,
        counter_ptr=torch.zeros(D * grid[2], dtype=torch.int32, device=saved.device), T=T, B=B, H=H,
        first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, BLOCK_B=plan.block_b,
        BLOCK_H=plan.block_h, BLOCK_P=plan.block_p, num_warps=plan.num_warps, **dot_flags(w_hh.dtype),
    )
    if not _run_persistent("gru_bwd_persistent", _gru_bwd_persistent_kernel, grid, T, saved.device, args,
                           phases=True):
        return None
    return dxw, dghn, dh_state[:, T % 2]


def rnn_fwd_persistent(xw, h0, w_hh, lengths, first_reverse, nonlinearity, save, plan: PersistentPlan):
    """rnn_fwd (recgen/ops/rnn.py) in the persistent mode: the same inputs and outputs. Returns
    None, having launched nothing, where lstm_fwd_persistent would."""
    from recgen.kernels.rnn_persistent import _rnn_fwd_persistent_kernel
    from recgen.ops.rnn import _relu_flag

    relu = _relu_flag(nonlinearity)
    T, B, _ = xw.shape
    D, H, _ = w_hh.shape
    grid = plan.grid(B, H, D)
    y = new_output((T, B, D * H), xw.dtype, xw.device)
    act = new_output((D, T, B, H), torch.float32, xw.device) if save else None
    h_state = ping_pong_state(h0)
    args = dict(
        xw_ptr=xw, w_hh_ptr=w_hh.contiguous(), lengths_ptr=lengths_arg(lengths, xw), y_ptr=y,
        act_ptr=act if save else y, h_state_ptr=h_state,
        counter_ptr=torch.zeros(D * grid[2], dtype=torch.int32, device=xw.device), T=T, B=B, H=H,
        stride_xt=xw.stride(0), stride_xb=xw.stride(1), stride_yt=y.stride(0), stride_yb=y.stride(1),
        first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, RELU=relu, SAVE=bool(save),
        BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, BLOCK_P=plan.block_p, num_warps=plan.num_warps,
        **dot_flags(w_hh.dtype),
    )
    if not _run_persistent("rnn_fwd_persistent", _rnn_fwd_persistent_kernel, grid, T, xw.device, args):
        return None
    return y, h_state[:, T % 2], act


def rnn_bwd_persistent(dy, dhn, act, w_hh, lengths, first_reverse, nonlinearity, plan: PersistentPlan):
    """rnn_bwd (recgen/ops/rnn.py) in the persistent mode: the same inputs and outputs (dpre,
    dh0). Returns None, having launched nothing, where lstm_fwd_persistent would."""
    from recgen.kernels.rnn_persistent import _rnn_bwd_persistent_kernel
    from recgen.ops.rnn import _relu_flag

    relu = _relu_flag(nonlinearity)
    D, T, B, H = act.shape
    grid = plan.grid(B, H, D)
    dpre = new_output((D, T, B, H), torch.float32, act.device)
    dh_state = ping_pong_state(dhn)
    args = dict(
        dy_ptr=dy, act_ptr=act, w_hh_ptr=w_hh.contiguous(), lengths_ptr=lengths_arg(lengths, act),
        dpre_ptr=dpre, dh_state_ptr=dh_state,
        counter_ptr=torch.zeros(D * grid[2], dtype=torch.int32, device=act.device), T=T, B=B, H=H,
        first_reverse=int(first_reverse), HAS_LENGTHS=lengths is not None, RELU=relu, BLOCK_B=plan.block_b,
        BLOCK_H=plan.block_h, BLOCK_P=plan.block_p, num_warps=plan.num_warps, **dot_flags(w_hh.dtype),
    )
    if not _run_persistent("rnn_bwd_persistent", _rnn_bwd_persistent_kernel, grid, T, act.device, args,
                           phases=True):
        return None
    return dpre, dh_state[:, T % 2]
