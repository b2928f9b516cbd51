"""Tile choices made from what the compiler produced: the rule every launcher follows.

A launcher offers its candidate tiles (block sizes, warps, software-pipelining stages) in order
of preference. The first whose compiled kernel spills no registers is launched; failing a
spill-free one, the one that spills least (the first of equals); a candidate the device cannot
load at all (more shared memory than a program may have) is out. No byte budget stands in for
the compiler: the facts are read from the compiled kernel, in one of three ways:

- on the GPU: the kernel is compiled for the device (`kernel.warmup`, nothing launched) and its
  spills, registers and shared memory are read from the loaded binary;
- in an ahead-of-time capture (`capture()`, bench/config_resources.py): compiled for sm_90 on a
  machine without a GPU (recgen.aot), and every launch is recorded instead of run, so the
  launchers' own code says which kernels a grid point launches and with which tiles;
- from a resource table (`capture(table=...)`, tests/test_config_table.py): the committed
  table answers, and a candidate it lacks is an error (the table is out of date).

Without a compiler for the tensors' device (the interpreter, or a torch.compile trace with CPU
fake tensors, which never launches) the first candidate is taken. A choice is made once per
compiled-kernel identity (kernel, constexprs, tensor dtypes, integer specialisations, device,
candidates): rejected candidates cost a compilation once, never a launch.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from recgen.backend import interpreting

MIN_DOT = 16  # tl.dot needs at least 16 rows and columns


def padded(n: int, cap: int | None = None) -> int:
    """A block size for a dimension of n: its next power of two, at least MIN_DOT, at most cap."""
    block = max(MIN_DOT, 1 << max(0, n - 1).bit_length())
    return block if cap is None else min(cap, block)


# Triton's default pipelining depth for NVIDIA targets (CUDAOptions.num_stages); candidates
# name their stages explicitly so the tables say what ran.
DEFAULT_STAGES = 3
# (warps, stages) of a single-program kernel, preferred first: Triton's defaults, then twice
# the threads (each holds half as many of the tile's values), then no multi-buffering of the
# loop's loads (which holds the next steps' loads in registers and shared memory).
WARPS_STAGES = ((4, DEFAULT_STAGES), (8, DEFAULT_STAGES), (4, 1), (8, 1))


def warps_stages(first_warps: int) -> tuple:
    """WARPS_STAGES with `first_warps` (a tile rule's own choice of warps) preferred."""
    return tuple(sorted(WARPS_STAGES, key=lambda ws: (ws[1] != DEFAULT_STAGES, ws[0] != first_warps)))


def tile_candidates(mode: str, first_warps: int = 4, **blocks) -> tuple:
    """Candidates of fixed block sizes `blocks`, at every (warps, stages) of
    warps_stages(first_warps)."""
    return tuple(Tiles.of(mode, **blocks, num_warps=w, num_stages=st) for w, st in warps_stages(first_warps))


@dataclass(frozen=True)
class Tiles:
    """One candidate: `mode` names it in tables ('resident', 'streamed', 'conv', ...); `meta`
    holds the launch's tile constexprs, num_warps and num_stages as sorted (name, value) pairs."""
    mode: str
    meta: tuple

    @classmethod
    def of(cls, mode: str, **meta) -> "Tiles":
        return cls(mode, tuple(sorted(meta.items())))

    def args(self) -> dict:
        return dict(self.meta)

    def __getitem__(self, name: str):
        return dict(self.meta)[name]

    def describe(self) -> str:
        return f"{self.mode} " + " ".join(f"{k}={v}" for k, v in self.meta)


def unique(candidates) -> tuple:
    """The candidates in order, without repeats (tile caps can make two the same)."""
    return tuple(dict.fromkeys(candidates))


# What answers for the compiler: None (the device's compiler, or the interpreter's first
# candidate), or a capture (see capture()).
_CAPTURE: dict = {"active": None}
# compiled-kernel identity -> the chosen Tiles
_CHOSEN: dict = {}


class Capture:
    """What a capture() block saw: `decisions` (one per choose(): the kernel, its identity, every
    candidate's resources, the choice) and `launches` (one per launch: name, kernel, grid,
    identity), each tagged with the `label` set at the time; `compiled` (identity -> resources)
    `seconds` (identity -> CPU seconds its compilation took here) and `first_label` (the label
    under which it was first compiled) of every kernel compiled."""

    def __init__(self, table: dict | None, target: int):
        self.table, self.target, self.label = table, target, None
        self.decisions, self.launches, self.compiled, self.seconds, self.first_label = [], [], {}, {}, {}

    def resources(self, kernel, args: dict):
        from recgen import aot

        key = aot.identity(kernel, args)
        if key not in self.compiled:
            if self.table is not None:
                if key not in self.table:
                    raise LookupError(f"the resource table has no entry for {kernel.__name__} with {dict(key[1])}; "
                                      "recompute it with bench/config_resources.py")
                self.compiled[key] = self.table[key]
            else:
                start = _cpu_seconds()
                self.compiled[key] = aot.launch_resources(kernel, args, self.target)
                self.seconds[key] = _cpu_seconds() - start
                self.first_label[key] = self.label
        return self.compiled[key]


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (ptxas): a compile's cost, whatever
    else shares the machine's cores."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def capture(table: dict | None = None, target: int = 90):
    """For a with block, on a machine without a GPU (kernels compiled, not interpreted): CPU
    tensors go to the kernels' launchers, each tile choice is made from kernels compiled for
    sm_`target` (or looked up in `table`: recgen.aot.identity -> resources), and launches are
    recorded, not run (outputs hold garbage). Yields the Capture."""
    if interpreting():
        raise RuntimeError("tiles.capture compiles the kernels: run it without TRITON_INTERPRET=1")
    from recgen import backend

    state = Capture(table, target)
    saved = dict(_CHOSEN)
    _CHOSEN.clear()
    _CAPTURE["active"] = state
    try:
        with backend.kernels_on_cpu():
            yield state
    finally:
        _CAPTURE["active"] = None
        _CHOSEN.clear()
        _CHOSEN.update(saved)


def capturing():
    """The active Capture, or None."""
    return _CAPTURE["active"]


def _device_resources(kernel, args: dict):
    """{registers, spilled_bytes, shared_bytes, num_warps} of `kernel` compiled for the GPU with
    `args` (tile arguments included), or None when the device cannot load it."""
    from triton.runtime.errors import OutOfResources
    from triton.runtime.jit import MockTensor

    # Only dtypes and alignment reach the compiler: stand-ins (also for fake tensors, as
    # torch.compile traces with).
    mocked = {k: MockTensor(v.dtype) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    compiled = kernel.warmup(grid=(1,), **mocked)
    try:
        compiled._init_handles()
    except OutOfResources:
        return None
    # n_spills counts 4-byte words of local memory per thread (Triton's driver.c).
    return {"registers": compiled.n_regs, "spilled_bytes": 4 * compiled.n_spills,
            "shared_bytes": compiled.metadata.shared, "num_warps": compiled.metadata.num_warps}


def compiled_resources(kernel, args: dict):
    """The compiled facts of `kernel` launched with `args` (see _device_resources) from the active
    capture, else from the device's compiler."""
    active = capturing()
    if active is not None:
        return active.resources(kernel, args)
    return _device_resources(kernel, args)


def pick(candidates: tuple, resources_of) -> tuple:
    """(chosen candidate, [(candidate, resources or None)] of those compiled): the first that
    spills nothing, else the least spilling, first of equals; resources_of(candidate) gives
    None for one the device cannot load. Stops at the first spill-free one. Raises if none
    loads."""
    tried, best = [], None
    for candidate in candidates:
        found = resources_of(candidate)
        tried.append((candidate, found))
        if found is None:
            continue
        if best is None or found["spilled_bytes"] < best[1]["spilled_bytes"]:
            best = (candidate, found)
        if found["spilled_bytes"] == 0:
            break
    if best is None:
        raise RuntimeError(f"no candidate tiles load on this device: {[c.describe() for c in candidates]}")
    return best[0], tried


def _device_of(args: dict) -> str:
    return next(str(v.device) for v in args.values() if isinstance(v, torch.Tensor))


def choose_spilling(name: str, kernel, candidates: tuple, args: dict) -> tuple:
    """(the candidate `kernel` runs with for these launch arguments, its spilled bytes per
    thread: None without a compiler for the tensors' device), by the rule in the module
    docstring, cached per compiled-kernel identity."""
    active = capturing()
    device = _device_of(args)
    if active is None and (interpreting() or not device.startswith("cuda")):
        # No compiler for this device: the interpreter, or a trace with CPU (fake) tensors that
        # never launches.
        return candidates[0], None
    from recgen import aot

    key = (name, aot.identity(kernel, args), device, candidates)
    if key not in _CHOSEN:
        chosen, tried = pick(candidates, lambda c: compiled_resources(kernel, {**args, **c.args()}))
        _CHOSEN[key] = (chosen, dict(tried)[chosen]["spilled_bytes"])
        if active is not None:
            active.decisions.append({"label": active.label, "name": name, "kernel": kernel.__name__,
                                     "tried": [(c.describe(), r) for c, r in tried],
                                     "chosen": chosen.describe()})
    return _CHOSEN[key]


def choose(name: str, kernel, candidates: tuple, args: dict) -> Tiles:
    """The candidate of choose_spilling()."""
    return choose_spilling(name, kernel, candidates, args)[0]


def launch_chosen(name: str, kernel, candidates: tuple, grid: tuple, **args) -> Tiles:
    """Choose among `candidates` (choose()) and launch `kernel` on `grid` with them; returns the
    chosen Tiles."""
    from recgen.ops._launch import launch

    chosen = choose(name, kernel, candidates, args)
    launch(name, kernel, grid, **args, **chosen.args())
    return chosen
