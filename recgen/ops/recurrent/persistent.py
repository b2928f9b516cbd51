"""Tiles of the persistent multi-program mode (recgen/ops/persistent.py): the candidate plans,
the co-residency check, the choice among the candidates, and the launch.

The grid-wide barrier of a persistent kernel only completes if every program of a group runs at
the same time, so before a launch the compiled kernel's occupancy (registers, shared memory and
threads per program against the SM's limits, read from the device, never assumed) must admit the
whole grid on the device's SMs. The launch is also cooperative, so the driver enforces the same:
it runs all programs at once or refuses the launch (then the streamed kernel runs), never a grid
that would wait at the barrier forever.

Grid: (column blocks of BLOCK_H hidden units, directions, groups). A group of programs (one per
column block) works through batch tiles of BLOCK_B rows; with as many groups as tiles each
program has one tile, and when the device cannot hold that many programs at once, fewer groups
each loop over several tiles per step (the W_hh slices stay on chip either way).

Tiles are chosen per launch key from the compiled kernels, not timed. Each candidate of
persistent_plans() (hidden units per program, BLOCK_B rows per tile, warps) is compiled and
given as many groups as the device holds at once (its occupancy on the device's SMs, at most one
group per tile); a candidate whose shared memory exceeds the per-block limit, or of which not
even one group per direction fits, is out. Of the rest the rule takes the one that spills no
registers and steps through the fewest batch rows per program and step, the first of equals
(failing a spill-free one, the one that spills least). 16 hidden units per program come first,
then 8 (twice the programs, each holding half the W_hh slice: the fallback where the 16-unit
slice spills or does not fit at all, as for the float32 LSTM and GRU at H=1024, 256 and 192 KiB,
or where it leaves each program more rows per step); of equals the wider wins (fewer programs
read h_{t-1} and meet at the barrier). The search stops at the first spill-free candidate with
one 16-row tile per program (the common case: nothing can step through fewer rows). The choice
is cached per (kernel, shapes, directions, dtypes, flags, device). If no candidate fits, the
launcher runs the streamed single-program kernel instead.
bench/kernel_resources.py shows what the candidates need on Hopper (compiled without a GPU).

The barrier cannot hang: each wait polls at most SPIN_LIMIT times, and a program that runs out
sets the error flag that follows the counters (one int32 per (direction, group), then the flag:
0, or the target of the first wait that ran out) and releases every barrier of the launch,
which then finishes quickly with garbage outputs. After the launch the flag is checked:
- on the host (RuntimeError naming the kernel, the grid and the plan) under the interpreter,
  and on the GPU when RECGEN_CHECK_BARRIER=1 (read at each call; the tests set it), unless a
  CUDA graph is being captured: the read syncs the host with the device, which the normal path
  avoids (it would stall the queue of launches behind every persistent launch);
- otherwise on the device (torch._assert_async, no host sync, captured into graphs too): a
  timeout is then a device-side assert naming the same, fatal to the CUDA context, and never
  garbage passed on silently.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re

import torch
import triton

from recgen.backend import interpreting
from recgen.ops.common.launch import launch, temporarily_set
from recgen.ops.common.tiling import PersistentPlan
from recgen.ops.recurrent.shared import ping_pong_state

# The single launch with the grid barrier is cooperative (CU_LAUNCH_ATTRIBUTE_COOPERATIVE): the
# driver guarantees that all its programs run at once, or refuses the launch, so a grid that is
# not co-resident (the occupancy check wrong, or SMs taken by other work) fails instead of
# deadlocking at the barrier; run_persistent then streams. (Triton 3.2 and later have the option;
# with an older Triton the persistent mode is not used.)
COOPERATIVE = {"launch_cooperative_grid": True}
# CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE (cuda.h): the driver refused a cooperative grid as
# larger than the device holds at once.
COOPERATIVE_LAUNCH_TOO_LARGE = 720
TRITON_CUDA_ERROR = "Triton Error [CUDA]: "  # Triton's launch errors: this, then cuGetErrorString
# Polls one barrier wait may take. A legal wait lasts one step of the slowest program of the
# group (microseconds; milliseconds at the largest tiles): 2**24 polls of an L2 atomic (about
# 0.5 us each) are seconds, far above it, and bound a hang to seconds.
SPIN_LIMIT = 2 ** 24
CHECK_BARRIER_ENV = "RECGEN_CHECK_BARRIER"
# Test hooks: the spin budget, and the single launch with the barrier under the interpreter
# (which otherwise launches once per step): see barrier_test_hook.
_BARRIER = {"spin_limit": SPIN_LIMIT, "interpreted_single_launch": False}


def barrier_test_hook(spin_limit: int, single_launch: bool = True):
    """For a with block: barrier waits give up after `spin_limit` polls, and (single_launch)
    the interpreter runs the persistent kernels as on the GPU, one launch with the barrier on,
    with the first candidate plan. Under the interpreter programs run one after another, so a
    group of two or more programs can only run out of polls: the path tests/test_barrier.py
    checks."""
    if spin_limit < 1:
        raise ValueError(f"spin_limit must be >= 1, got {spin_limit}")
    return temporarily_set(_BARRIER, spin_limit=spin_limit, interpreted_single_launch=single_launch)


def cooperative_launch_supported() -> bool:
    from triton.backends.nvidia.compiler import CUDAOptions

    return "launch_cooperative_grid" in {f.name for f in dataclasses.fields(CUDAOptions)}


STATE_POINTERS = ("h_state_ptr",)  # the forwards exchange h_t in the weights' dtype


def exchange_state(h0: torch.Tensor, dtype: torch.dtype) -> tuple:
    """A persistent forward's state: the (D, 2, B, H) ping-pong buffer through which programs
    exchange h_t, in the dtype of the next step's dot operand (the weights'), and the float32
    (D, B, H) copy of h each program keeps of its own columns (h0 in, h_n out)."""
    return ping_pong_state(h0, dtype), h0.to(torch.float32, copy=True).contiguous()


def occupancy(registers: int, num_warps: int, shared_bytes: int, limits: dict) -> int:
    """Programs of a kernel one SM holds at once (0: it cannot launch at all), from its registers
    per thread, warps and shared memory per program against the SM's limits: `registers`,
    `threads`, `shared_bytes` per SM and `shared_per_block`. Registers are allocated per warp
    in units of 256. Each resident program also takes the shared memory the system reserves per
    block (1 KB on sm_80 and sm_90), which is what the SM has beyond the most one block may opt
    into; the driver counts it the same way when it admits a cooperative launch."""
    if shared_bytes > limits["shared_per_block"]:
        return 0
    regs_per_warp = -(-registers * 32 // 256) * 256
    counts = [limits["threads"] // (32 * num_warps), limits["registers"] // (regs_per_warp * num_warps)]
    reserved = max(0, limits["shared_bytes"] - limits["shared_per_block"])
    counts.append(limits["shared_bytes"] // (shared_bytes + reserved) if shared_bytes + reserved else counts[0])
    return max(0, min(counts))


def device_limits(device: torch.device):
    """(per-SM limits for occupancy(), SM count) of `device`, or None when a limit cannot be read
    (never assume residency: the caller streams). Inside a tile capture: an H200's (sm_90)."""
    from recgen.ops.common.tiling import capturing

    if capturing() is not None:
        from recgen.ops.common.tiling import SM90_LIMITS
        return SM90_LIMITS, SM90_LIMITS["sms_h200"]
    props = torch.cuda.get_device_properties(device)
    needed = ("max_threads_per_multi_processor", "regs_per_multiprocessor", "shared_memory_per_multiprocessor")
    if not all(hasattr(props, name) for name in needed):
        return None
    limits = {"registers": props.regs_per_multiprocessor, "threads": props.max_threads_per_multi_processor,
              "shared_bytes": props.shared_memory_per_multiprocessor,
              "shared_per_block": getattr(props, "shared_memory_per_block_optin",
                                          props.shared_memory_per_multiprocessor)}
    return limits, props.multi_processor_count


def fitted(plan: PersistentPlan, batch: int, hidden: int, directions: int, per_sm: int, sms: int):
    """`plan` with as many groups as the device holds at once (at most one per batch tile, and at
    most plan.groups if set), given `per_sm` programs of its compiled kernel per SM on `sms` SMs;
    None if not even one group of every direction fits."""
    columns = triton.cdiv(hidden, plan.block_h)
    groups = min(plan.grid(batch, hidden, directions)[2], sms * per_sm // (columns * directions))
    return dataclasses.replace(plan, groups=groups) if groups >= 1 else None


# (kernel name, scalar arguments, tensor dtypes, device, candidates, (batch, hidden, directions))
# -> the chosen PersistentPlan, or None when no candidate fits: a choice costs compilations, so
# it is made once per key.
_CHOSEN: dict = {}


def _launch_key(name: str, plans: tuple, args: dict, device: torch.device) -> tuple:
    scalars = tuple(sorted((k, v) for k, v in args.items() if not isinstance(v, torch.Tensor)))
    dtypes = tuple(sorted((k, str(v.dtype)) for k, v in args.items() if isinstance(v, torch.Tensor)))
    return name, scalars, dtypes, str(device), plans


def _plan_key(name: str, plans: tuple, shape: tuple, device: torch.device, args: dict) -> tuple:
    # The shape is part of the key: the directions are in no scalar argument, and a plan's
    # groups are fitted to them (a unidirectional plan would not be co-resident bidirectionally).
    return _launch_key(name, plans, args, device) + (shape,)


def pick_plan(plans: tuple, fit, batch: int):
    """Of `plans`, the fitting one that spills nothing and steps through the fewest batch rows per
    program (its tiles times BLOCK_B); failing a spill-free one, the one that spills least; the
    first of equals; None if none fits. fit(plan): (spilled registers, the plan with its groups),
    or None when the device cannot hold it. Stops at the first spill-free plan stepping through
    one tile of the smallest candidate height: no other can step through fewer rows; and once a
    spill-free plan is found, skips (never compiles) the plans whose tiles alone have more rows
    than it steps through, which could only rank below it."""
    best, best_rank = None, None
    fewest_rows = min((plan.block_b for plan in plans), default=0)
    for order, plan in enumerate(plans):
        if best_rank is not None and best_rank[0] == 0 and plan.block_b > best_rank[1]:
            continue  # steps through more rows than the spill-free best whatever it compiles to: not compiled
        found = fit(plan)
        if found is None:
            continue
        spills, plan = found
        rank = (spills, plan.rows_per_step(batch), order)
        if best is None or rank < best_rank:
            best, best_rank = plan, rank
        if spills == 0 and plan.rows_per_step(batch) == fewest_rows:
            break
    return best


def _fit_on_device(kernel, plan: PersistentPlan, shape: tuple, device: torch.device, args: dict):
    """(bytes spilled per thread, `plan` with as many groups as fit) for `kernel` compiled with
    `plan`'s tiles for `device` (recgen.ops.common.tiling.compiled_resources), or None when the device
    cannot hold it: too much shared memory per program, or not even one group per direction
    resident at once."""
    from recgen.ops.common.tiling import compiled_resources

    # The counters' size depends on the plan: a one-element stand-in (same dtype) to compile with.
    counters = torch.zeros(1, dtype=torch.int32, device=device)
    found = compiled_resources(kernel, dict(args, counter_ptr=counters, **plan.launch_args(), **COOPERATIVE))
    device_facts = device_limits(device)
    if found is None or device_facts is None or not found["registers"]:
        return None
    limits, sms = device_facts
    per_sm = occupancy(found["registers"], found["num_warps"], found["shared_bytes"], limits)
    plan = fitted(plan, *shape, per_sm, sms)
    return None if plan is None else (found["spilled_bytes"], plan)


def choose_plan(name: str, kernel, plans: tuple, shape: tuple, device: torch.device, args: dict):
    """The plan a persistent launch of `kernel` uses (pick_plan on the compiled candidates: the
    rule in the module docstring), cached per launch key; None when no candidate fits the device.
    shape: (batch, hidden, directions)."""
    from recgen.ops.common.tiling import capturing

    key = _plan_key(name, plans, shape, device, args)
    if key not in _CHOSEN:
        tried = []

        def fit(plan):
            found = _fit_on_device(kernel, plan, shape, device, args)
            tried.append((plan, found))
            return found

        _CHOSEN[key] = pick_plan(plans, fit, shape[0])
        active = capturing()
        if active is not None:  # what a tile capture reports: every plan compiled, and the choice
            active.decisions.append({"label": active.label, "name": name, "kernel": kernel.__name__,
                                     "tried": [(describe_plan(p, shape), None if f is None else f[0])
                                               for p, f in tried],
                                     "chosen": None if _CHOSEN[key] is None else describe_plan(_CHOSEN[key], shape)})
    return _CHOSEN[key]


def describe_plan(plan: PersistentPlan, shape: tuple) -> str:
    """A plan in a table: its tiles and, with groups fitted, its grid for shape (B, H, D)."""
    grid = plan.grid(*shape)
    return (f"persistent BLOCK_B={plan.block_b} BLOCK_H={plan.block_h} num_warps={plan.num_warps} "
            f"groups={grid[2]} grid={grid}")


def barrier_counters(grid: tuple, device: torch.device) -> torch.Tensor:
    """Zeros: a barrier counter per (direction, group) of `grid`, then the error flag."""
    return torch.zeros(grid[1] * grid[2] + 1, dtype=torch.int32, device=device)


@functools.lru_cache(maxsize=None)
def cuda_error_texts(code: int) -> tuple:
    """(name, description) of CUDA driver error `code` (cuGetErrorName, cuGetErrorString), from
    the driver Triton launches through (libcuda.so.1, already loaded: the same library)."""
    import ctypes

    libcuda = ctypes.CDLL("libcuda.so.1")
    texts = []
    for fn in (libcuda.cuGetErrorName, libcuda.cuGetErrorString):
        fn.argtypes, fn.restype = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)], ctypes.c_int
        out = ctypes.c_char_p()
        if fn(code, ctypes.byref(out)) != 0:
            raise ValueError(f"the CUDA driver knows no error {code}")
        texts.append(out.value.decode())
    return tuple(texts)


def is_cuda_error(error: BaseException, code: int) -> bool:
    """Whether `error`, raised by a Triton launch, is CUDA driver error `code`. Triton (driver.c,
    gpuAssert, 3.x) raises RuntimeError(TRITON_CUDA_ERROR + cuGetErrorString(code)), which
    carries no code: the message must be exactly that for `code`, or name it (cuGetErrorName),
    as a Triton reporting names would. Words of the message are not enough: another error
    could mention them."""
    name, description = cuda_error_texts(code)
    message = str(error).strip()
    return message == TRITON_CUDA_ERROR + description or re.search(rf"\b{name}\b", message) is not None


def check_barrier(counters: torch.Tensor, name: str, kernel, plan: PersistentPlan, shape: tuple, steps: int,
                  spin_limit: int) -> None:
    """After a single launch: raise if a barrier wait ran out (the flag after the counters is
    set), on the host or the device as the module docstring says."""
    grid = plan.grid(*shape)
    columns, directions, groups = grid
    plan_text = (f"plan: {plan.tiles(shape[0])} batch tiles of {plan.block_b} rows, {columns} column blocks of "
                 f"{plan.block_h} hidden units, {groups} groups per direction ({directions} directions), "
                 f"{plan.num_warps} warps")
    kernel_text = f"{name} ({getattr(kernel, '__name__', type(kernel).__name__)}, grid {grid}, {plan_text})"
    flag = counters[-1]
    capturing = counters.is_cuda and torch.cuda.is_current_stream_capturing()
    if interpreting() or (os.environ.get(CHECK_BARRIER_ENV, "0") == "1" and not capturing):
        failed = int(flag.item())
        if failed:
            raise RuntimeError(f"{kernel_text}: the grid barrier of step {failed // columns - 1} (of {steps}) "
                               f"ran out of its {spin_limit} polls; the programs of a group were not all running "
                               f"at once, and the outputs are garbage")
        return
    torch._assert_async(flag == 0, f"{kernel_text}: a grid barrier ran out of its {spin_limit} polls")


def run_persistent(name: str, kernel, plans: tuple, shape: tuple, steps: int, device: torch.device, args: dict,
                   phases: bool = False) -> bool:
    """Launch a persistent kernel over `steps` steps with the tiles choose_plan() picks: one
    launch with the grid barrier (PHASES=3 when `phases`), its error flag checked after
    (check_barrier). Under the interpreter, the first plan, one launch per step (and per phase,
    1 then 2, when `phases`): launches are ordered, so each sees the previous one's writes
    (barrier_test_hook switches to the single launch). Returns False, having launched nothing,
    when no plan fits the device or the driver refuses the cooperative launch, with a Triton
    that cannot launch cooperatively, when the barrier targets could reach BARRIER_RELEASED, or
    while torch.compile traces with fake tensors (there is no compiled kernel to measure; the
    caller then traces the streamed kernel). shape: (batch, hidden, directions); `args` has
    every kernel argument but the barrier counters and the spin limit, added here."""
    from torch._subclasses.fake_tensor import is_fake

    from recgen.kernels.recurrent.steps import BARRIER_RELEASED

    if any(is_fake(v) for v in args.values()):
        return False
    # The int32 counters reach steps x column blocks, and must stay below the release value.
    if steps * triton.cdiv(shape[1], min(p.block_h for p in plans)) >= BARRIER_RELEASED.value:
        return False
    spin_limit = _BARRIER["spin_limit"]
    args = dict(args, spin_limit=spin_limit)
    if interpreting() and not _BARRIER["interpreted_single_launch"]:
        plan = plans[0]  # the interpreter has no occupancy: the first candidate as it is
        grid = plan.grid(*shape)
        args = dict(args, counter_ptr=barrier_counters(grid, device), **plan.launch_args())
        for i in range(steps):
            for extra in ({"PHASES": 1}, {"PHASES": 2}) if phases else ({},):
                launch(name, kernel, grid, step_begin=i, step_end=i + 1, GRID_SYNC=False, **extra, **args)
        return True
    args = dict(args, step_begin=0, step_end=steps, GRID_SYNC=True, **({"PHASES": 3} if phases else {}))
    if interpreting():
        plan, options = plans[0], {}
    else:
        if not cooperative_launch_supported():
            return False
        plan, options = choose_plan(name, kernel, plans, shape, device, args), COOPERATIVE
        if plan is None:
            return False
    counters = barrier_counters(plan.grid(*shape), device)
    try:
        launch(name, kernel, plan.grid(*shape), counter_ptr=counters, **args, **plan.launch_args(), **options)
    except RuntimeError as error:
        # The driver refused the grid as not co-resident, against the occupancy read from the
        # compiled kernel: nothing ran; stream instead, now and for this key from now on.
        if not options or not is_cuda_error(error, COOPERATIVE_LAUNCH_TOO_LARGE):
            raise
        _CHOSEN[_plan_key(name, plans, shape, device, args)] = None
        return False
    check_barrier(counters, name, kernel, plan, shape, steps, spin_limit)
    return True
