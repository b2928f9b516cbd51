"""The tiling module: the rule every launcher follows, every family's candidate tiles, and the
one override (forced_tiles) that tests and benchmarks pin tiles with.

The rule: tile choices are made from what the compiler produced.

A launcher offers its candidate tiles (block sizes, warps, software-pipelining stages) in order
of preference. The first whose compiled kernel spills no registers is launched; failing a
spill-free one, the one that spills least (the first of equals); a candidate the device cannot
load at all (more shared memory than a program may have) is out. No byte budget stands in for
the compiler: the facts are read from the compiled kernel, in one of three ways:

- on the GPU: the kernel is compiled for the device (`kernel.warmup`, nothing launched) and its
  spills, registers and shared memory are read from the loaded binary;
- in an ahead-of-time capture (recgen/tools/capture.py, bench/config_resources.py): compiled for
  sm_90 on a machine without a GPU (recgen/tools/aot_compile.py), and every launch is recorded
  instead of run, so the launchers' own code says which kernels a grid point launches and with
  which tiles;
- from a resource table (the capture with `table=`, tests/test_config_table.py): the committed
  table answers, and a candidate it lacks is an error (the table is out of date).

The library holds only the capture's hook (recording(), capturing()): it calls the recorder the
tooling installed and never imports the tooling.

Without a compiler for the tensors' device (the interpreter, or a torch.compile trace with CPU
fake tensors, which never launches) the first candidate is taken. A choice is made once per
compiled-kernel identity (kernel, constexprs, tensor dtypes, integer specialisations, device,
candidates): rejected candidates cost a compilation once, never a launch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from recgen.backend import interpreting
from recgen.ops.common.kernel_identity import identity

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
# candidate), or the recorder of a tile capture (see recording()).
_CAPTURE: dict = {"active": None}
# compiled-kernel identity -> the chosen Tiles
_CHOSEN: dict = {}

# Per-SM limits of compute capability 9.0 (H100/H200): NVIDIA, Hopper tuning guide, section 1.4.1
# (the same values the launcher reads from torch.cuda.get_device_properties on the GPU). Inside a
# tile capture the persistent launchers fit their grids to these (an H200's SM count).
SM90_LIMITS = {"registers": 65536, "threads": 2048, "shared_bytes": 233472, "shared_per_block": 232448,
               "max_registers_per_thread": 255, "sms_h200": 132}


@contextlib.contextmanager
def recording(recorder):
    """For a with block, `recorder` answers for the compiler and is told what the launchers do:
    the hook a tile capture (recgen/tools/capture.py, which the library never imports) installs.
    The recorder has `resources(kernel, args)` (what compiled_resources() answers), `label` (a
    tag for what follows), and lists `decisions` (one per tile choice) and `launches` (one per
    launch, recorded instead of run); the choices made before the block are set aside for it."""
    saved = dict(_CHOSEN)
    _CHOSEN.clear()
    _CAPTURE["active"] = recorder
    try:
        yield recorder
    finally:
        _CAPTURE["active"] = None
        _CHOSEN.clear()
        _CHOSEN.update(saved)


def capturing():
    """The recorder of the active tile capture (recording()), or None."""
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
    key = (name, identity(kernel, args), device, candidates)
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
    from recgen.ops.common.launch import launch

    chosen = choose(name, kernel, candidates, args)
    launch(name, kernel, grid, **args, **chosen.args())
    return chosen


# ---- every family's tile rule, next to its reason ---------------------------------------------
# What each launcher offers choose() (single-program kernels) or the persistent plan search. The
# one override, forced_tiles(), pins any of them for a with block (tests and benchmarks).

MODES = ("resident", "streamed", "persistent")  # recurrence kernel modes (recgen/ops/recurrent/modes.py)
_FORCED: dict = {"mode": None, "stream_block": None, "groups": 0, "columns": 0, "conv": None,
                 "conv_bwd_split": None, "conv_bwd_channel_block": None, "affine": None, "dense": None,
                 "dense_split": None}


def forced(name: str):
    """The forced_tiles() setting `name` in force (None or 0: the rule decides)."""
    return _FORCED[name]


def _check_power_of_two(name: str, value, minimum: int = 1) -> None:
    if value is not None and (value < minimum or value & (value - 1)):
        raise ValueError(f"{name} must be a power of two >= {minimum}, got {value}")


def forced_tiles(*, mode: str | None = None, stream_block: int | None = None, groups: int = 0,
                 columns: int = 0, conv: tuple | None = None, conv_bwd_split: int | None = None,
                 conv_bwd_channel_block: int | None = None, affine: tuple | None = None,
                 dense: tuple | None = None, dense_split: int | None = None):
    """For a with block, pin tiles the rules below would choose (tests and benchmarks): a
    recurrence `mode` (and the streamed width `stream_block`, at most `groups` persistent program
    groups per direction, `columns` hidden units per persistent program); the conv forward's
    `conv` = (BLOCK_M, BLOCK_CI, BLOCK_CO[, num_warps]), which it then runs with exactly; the conv
    backward's weight-gradient split and channel-block cap; the affine kernels' `affine` =
    (BLOCK_P, BLOCK_C); the dense kernels' `dense` = (BLOCK_M, BLOCK_I, BLOCK_O), the blocks of
    rows, input and output features of all three (each at every warps/stages candidate), and
    `dense_split`, the weight gradient's number of row slices. Settings left out keep the rule's
    choice."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown recurrence mode {mode!r}; expected one of {MODES}")
    _check_power_of_two("stream_block", stream_block, MIN_DOT)
    if groups < 0:
        raise ValueError(f"groups must be >= 0, got {groups}")
    if columns and columns not in COLUMN_CHOICES:
        raise ValueError(f"columns must be 0 (the rule's choice) or one of {COLUMN_CHOICES}, got {columns}")
    if conv is not None:
        for name, block in zip(("block_m", "block_ci", "block_co"), conv[:3]):
            _check_power_of_two(name, block, MIN_DOT)
        conv = (*conv[:3], conv[3] if len(conv) > 3 else 4)
    if conv_bwd_split is not None and conv_bwd_split < 1:
        raise ValueError(f"split must be >= 1, got {conv_bwd_split}")
    _check_power_of_two("channel_block", conv_bwd_channel_block, MIN_DOT)
    if affine is not None:
        for name, block in zip(("block_p", "block_c"), affine):
            _check_power_of_two(name, block)
    if dense is not None:
        if len(dense) != 3:
            raise ValueError(f"dense must be (block_m, block_i, block_o), got {dense!r}")
        for name, block in zip(("block_m", "block_i", "block_o"), dense):
            _check_power_of_two(name, block, MIN_DOT)
        dense = tuple(dense)
    if dense_split is not None and dense_split < 1:
        raise ValueError(f"dense_split must be >= 1, got {dense_split}")
    settings = dict(mode=mode, stream_block=stream_block, groups=groups, columns=columns, conv=conv,
                    conv_bwd_split=conv_bwd_split, conv_bwd_channel_block=conv_bwd_channel_block, affine=affine,
                    dense=dense, dense_split=dense_split)

    @contextlib.contextmanager
    def pinned():
        saved = dict(_FORCED)
        _FORCED.update(settings)
        try:
            yield
        finally:
            _FORCED.update(saved)

    return pinned()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# -- recurrences, single program (recgen/ops/recurrent/modes.py) --
BATCH_ROWS = 16  # rows of a single-program tile (BLOCK_B): tl.dot's minimum, the batch padded to it
# An SM's register file (64K 32-bit registers on sm_80/sm_90): weights beyond it cannot stay on
# chip in one program, so resident tiles are not even compiled for them.
RESIDENT_LIMIT_BYTES = 65536 * 4
STREAM_BLOCKS = (64, 32, 16)  # streamed weight tiles, widest (fewest loads per step) first


def recurrence_candidates(gates: int, hidden: int, width: int, dtype: torch.dtype, has_proj: bool = False,
                          mode: str | None = None, block: int | None = None) -> tuple:
    """The single-program tiles for a cell with `gates` gate blocks, hidden size H and recurrent
    width P, preferred first: resident (all padded weights held on chip through the time loop)
    while they fit an SM's register file, then streamed 64, 32 and 16 wide, each at every
    WARPS_STAGES pair; `mode` and `block` keep only the resident or the streamed ones, of that
    width."""
    h_pad, p_pad = padded(hidden), padded(width)
    elem = torch.finfo(dtype).bits // 8
    weight_bytes = gates * h_pad * p_pad * elem + (h_pad * p_pad * elem if has_proj else 0)
    resident = [Tiles.of("resident", RESIDENT=True, BLOCK_B=BATCH_ROWS, BLOCK_H=h_pad, BLOCK_P=p_pad,
                         num_warps=warps, num_stages=stages) for warps, stages in WARPS_STAGES]
    streamed = [Tiles.of("streamed", RESIDENT=False, BLOCK_B=BATCH_ROWS, BLOCK_H=min(b, h_pad), BLOCK_P=min(b, p_pad),
                         num_warps=warps, num_stages=stages)
                for b in ((block,) if block else STREAM_BLOCKS) for warps, stages in WARPS_STAGES]
    if mode == "resident":
        return unique(resident)
    if mode == "streamed":
        return unique(streamed)
    return unique((resident if weight_bytes <= RESIDENT_LIMIT_BYTES else []) + streamed)


# -- recurrences, persistent (recgen/ops/recurrent/persistent.py fits these to the device) --
# Hidden units (of every gate) per program, preferred first; 8 is the fallback where 16 spill or
# do not fit (tl.dot takes N=8: Triton pads small N for the tensor cores).
COLUMN_CHOICES = (16, 8)
BLOCK_B_CHOICES = (16, 32, 64)  # batch rows per program, smallest first (more, smaller groups)
WARP_CHOICES = (4, 8)
# No software pipelining: Triton would multi-buffer the batch-tile loop's loads in shared memory
# (3 stages: the LSTM backward at H=512 needs 330 KB instead of 99 KB, more than an SM has), and
# nothing is gained: each step's loads wait on the grid barrier anyway (bench/kernel_resources.py).
PIPELINE_STAGES = 1


@dataclass(frozen=True)
class PersistentPlan:
    block_b: int      # batch rows per program
    block_h: int      # hidden units (of every gate) per program
    block_p: int      # the whole recurrent width, padded: h_{t-1} is read whole
    num_warps: int
    groups: int = 0   # program groups per direction, each looping over its share of the batch
                      # tiles; 0: one group per tile

    def tiles(self, batch: int) -> int:
        return _cdiv(batch, self.block_b)

    def grid(self, batch: int, hidden: int, directions: int) -> tuple:
        groups = min(self.groups or self.tiles(batch), self.tiles(batch))
        return (_cdiv(hidden, self.block_h), directions, groups)

    def rows_per_step(self, batch: int) -> int:
        """Batch rows one program works through per step (its tiles, one after another)."""
        return _cdiv(self.tiles(batch), self.grid(batch, 1, 1)[2]) * self.block_b

    def launch_args(self) -> dict:
        return {"BLOCK_B": self.block_b, "BLOCK_H": self.block_h, "BLOCK_P": self.block_p,
                "num_warps": self.num_warps, "num_stages": PIPELINE_STAGES}


def persistent_plans(batch: int, hidden: int, groups: int = 0, columns: int = 0) -> tuple:
    """The candidate tiles for a persistent launch, in order of preference: 16 hidden units per
    program before 8 (COLUMN_CHOICES), then fewest batch rows per tile first (a step's work spread
    over more programs; 16 is tl.dot's minimum), never more rows than the batch needs, and for
    each 4 warps before 8 (8 halve each thread's share of the W_hh slice and of h_{t-1}, which
    large H needs to avoid spilling). groups: at most this many groups per direction (0: one per
    tile, or as many as fit); columns: only this many units per program (0: both)."""
    block_p = padded(hidden)
    most_rows = padded(batch)
    return tuple(PersistentPlan(block_b, block_h, block_p, warps, groups)
                 for block_h in ((columns,) if columns else COLUMN_CHOICES)
                 for block_b in BLOCK_B_CHOICES if block_b <= most_rows for warps in WARP_CHOICES)


# -- conv forward (recgen/ops/conv/conv2d.py) --
def conv_blocks(M: int, CI: int, CO: int) -> tuple:
    """(BLOCK_M, BLOCK_CI, BLOCK_CO, num_warps) of the conv forward for M output pixels per image.
    Each block is the next power of two of its dimension, at least 16 (tl.dot), capped at BLOCK_M
    128, BLOCK_CI 32, BLOCK_CO 64: a 128 x 64 float32 accumulator plus the 128 x 32 A and 32 x 64
    B tiles fit one Hopper SM's registers and shared memory with pipelining, and small channel
    counts are not padded further than tl.dot needs; 8 warps first for the full 128 x 64 tile.
    Or the forced `conv`."""
    if _FORCED["conv"] is not None:
        return _FORCED["conv"]
    block_m, block_ci, block_co = padded(M, 128), padded(CI, 32), padded(CO, 64)
    return block_m, block_ci, block_co, 8 if block_m * block_co >= 128 * 64 else 4


def conv_tiles(M: int, CI: int, CO: int) -> tuple:
    """The conv forward's candidates: conv_blocks() at every (warps, stages) pair, its own warps
    first; a forced `conv` is the only candidate."""
    block_m, block_ci, block_co, warps = conv_blocks(M, CI, CO)
    candidates = tile_candidates("conv", warps, BLOCK_M=block_m, BLOCK_CI=block_ci, BLOCK_CO=block_co)
    return candidates[:1] if _FORCED["conv"] is not None else candidates


# -- conv backward (recgen/ops/conv/conv2d_bwd.py) --
MAX_CHANNEL_BLOCK = 64
MAX_PIXEL_BLOCK = 64
TARGET_PROGRAMS = 512    # about four waves of an H100/H200's 132 SMs
MIN_CHUNKS_PER_SPLIT = 8  # a weight-gradient program reduces at least 8 * BLOCK_R positions


@dataclass(frozen=True)
class ConvBwdConfig:
    block_p: int    # input pixels per data-gradient program
    block_ci: int   # input channels per program (both kernels)
    block_co: int   # output channels per chunk (data) or per program (weight)
    block_r: int    # reduction positions per step of the weight-gradient loop
    split: int      # weight-gradient programs along the reduction N * OH * OW
    r_per_split: int

    def data_tiles(self) -> tuple:
        return tile_candidates("conv_bwd_data", BLOCK_P=self.block_p, BLOCK_CI=self.block_ci, BLOCK_CO=self.block_co)

    def weight_tiles(self) -> tuple:
        return tile_candidates("conv_bwd_weight", BLOCK_CO=self.block_co, BLOCK_CI=self.block_ci,
                               BLOCK_R=self.block_r)


def conv_bwd_config(N: int, CI: int, CO: int, H: int, W: int, OH: int, OW: int, K: int) -> ConvBwdConfig:
    """Block sizes of both backward kernels and the weight gradient's reduction split. Every block
    is the next power of two of its dimension, at least 16 (tl.dot), capped at 64 (a 64 x 64
    float32 accumulator per program). The weight gradient has only K*K * cdiv(CO, BLOCK_CO) *
    cdiv(CI, BLOCK_CI) output tiles, often too few programs to fill the GPU, so its reduction over
    R = N*OH*OW is split into SPLIT slices: enough to reach about TARGET_PROGRAMS programs, but
    never slices shorter than MIN_CHUNKS_PER_SPLIT steps of BLOCK_R (each split costs a float32
    partial of dw). Slices are whole BLOCK_R steps; none is empty."""
    block_c = _FORCED["conv_bwd_channel_block"] or MAX_CHANNEL_BLOCK
    block_ci, block_co = padded(CI, block_c), padded(CO, block_c)
    block_p = padded(H * W, MAX_PIXEL_BLOCK)
    R = N * OH * OW
    block_r = padded(R, 64)
    chunks = _cdiv(R, block_r)
    tiles = K * K * _cdiv(CO, block_co) * _cdiv(CI, block_ci)
    split = _FORCED["conv_bwd_split"] or min(_cdiv(TARGET_PROGRAMS, tiles), chunks // MIN_CHUNKS_PER_SPLIT)
    split = max(1, min(split, chunks))
    per_split = _cdiv(max(chunks, 1), split)
    split = _cdiv(max(chunks, 1), per_split)
    return ConvBwdConfig(block_p, block_ci, block_co, block_r, split, per_split * block_r)


# -- the elementwise affine + activation kernels (recgen/ops/conv/affine.py) --
MAX_BLOCK_C = 128        # channels per tile (a contiguous row in channels-last memory)
TILE_ELEMENTS = 4096     # elements per program: BLOCK_P = TILE_ELEMENTS // BLOCK_C pixels


def affine_blocks(C: int, HW: int) -> tuple:
    """(BLOCK_P, BLOCK_C): a row of up to MAX_BLOCK_C channels, and enough pixels for about
    TILE_ELEMENTS elements per program (fewer when the image is small); or the forced `affine`."""
    if _FORCED["affine"] is not None:
        return _FORCED["affine"]
    block_c = padded(C, MAX_BLOCK_C)
    block_p = min(max(TILE_ELEMENTS // block_c, MIN_DOT), padded(HW))
    return block_p, block_c


def affine_tiles(C: int, HW: int) -> tuple:
    block_p, block_c = affine_blocks(C, HW)
    return tile_candidates("affine", BLOCK_P=block_p, BLOCK_C=block_c)


# -- dense layers (recgen/ops/dense/linear.py) --
# The forward's tile is rows x output features, reduced over the input features: the conv
# forward's reasoning and caps (a 128 x 64 float32 accumulator with its 128 x 32 and 32 x 64
# operand tiles fits one Hopper SM's registers and shared memory with pipelining; small
# dimensions are padded only to tl.dot's 16). The backward's tiles are rows x input features
# (data gradient, reduced over the output features) and output x input features (weight
# gradient, reduced over the rows), each capped at 128 x 64 / 64 x 64 with 32- and 64-wide
# reduction chunks. The weight gradient splits its reduction over M as the conv weight gradient
# does (conv_bwd_config): about TARGET_PROGRAMS programs, never slices shorter than
# MIN_CHUNKS_PER_SPLIT chunks, summed by torch in a fixed order (deterministic).
DENSE_MAX_ROWS = 128     # BLOCK_M of the forward and the data gradient
DENSE_MAX_COLUMNS = 64   # BLOCK_O of the forward, BLOCK_I of the data gradient, both of the weight gradient's tile
DENSE_MAX_CHUNK = 32     # the reduction chunk of the forward (BLOCK_I) and data gradient (BLOCK_O)
DENSE_MAX_ROW_CHUNK = 64  # the weight gradient's reduction chunk over the rows (BLOCK_M)


def _dense_warps(rows: int, columns: int) -> int:
    """8 warps first for a full 128 x 64 tile (as the conv rule), 4 otherwise."""
    return 8 if rows * columns >= DENSE_MAX_ROWS * DENSE_MAX_COLUMNS else 4


def dense_blocks(M: int, I: int, O: int) -> tuple:
    """(BLOCK_M, BLOCK_I, BLOCK_O, num_warps) of the dense forward: each block the next power of
    two of its dimension, at least 16 (tl.dot), capped at 128 rows, 32 input features per
    chunk, 64 output features; or the forced `dense` blocks."""
    if _FORCED["dense"] is not None:
        block_m, block_i, block_o = _FORCED["dense"]
    else:
        block_m, block_i, block_o = padded(M, DENSE_MAX_ROWS), padded(I, DENSE_MAX_CHUNK), padded(O, DENSE_MAX_COLUMNS)
    return block_m, block_i, block_o, _dense_warps(block_m, block_o)


def dense_tiles(M: int, I: int, O: int) -> tuple:
    """The dense forward's candidates: dense_blocks() at every (warps, stages) pair, its own
    warps first."""
    block_m, block_i, block_o, warps = dense_blocks(M, I, O)
    return tile_candidates("dense", warps, BLOCK_M=block_m, BLOCK_I=block_i, BLOCK_O=block_o)


def dense_bwd_data_blocks(M: int, I: int, O: int) -> tuple:
    """(BLOCK_M, BLOCK_I, BLOCK_O, num_warps) of the data gradient dx = dz @ W: a tile of up to
    128 rows x 64 input features, reduced over the output features in chunks of up to 32."""
    if _FORCED["dense"] is not None:
        block_m, block_i, block_o = _FORCED["dense"]
    else:
        block_m, block_i, block_o = padded(M, DENSE_MAX_ROWS), padded(I, DENSE_MAX_COLUMNS), padded(O, DENSE_MAX_CHUNK)
    return block_m, block_i, block_o, _dense_warps(block_m, block_i)


def dense_bwd_data_tiles(M: int, I: int, O: int) -> tuple:
    block_m, block_i, block_o, warps = dense_bwd_data_blocks(M, I, O)
    return tile_candidates("dense_bwd_data", warps, BLOCK_M=block_m, BLOCK_I=block_i, BLOCK_O=block_o)


@dataclass(frozen=True)
class DenseBwdWeightConfig:
    block_o: int      # output features per program
    block_i: int      # input features per program (1 tile along I when dW is not wanted)
    block_m: int      # rows per step of the reduction loop
    split: int        # programs along the reduction over M
    m_per_split: int  # rows per split, a multiple of block_m

    def tiles(self) -> tuple:
        return tile_candidates("dense_bwd_weight", BLOCK_O=self.block_o, BLOCK_I=self.block_i, BLOCK_M=self.block_m)


def dense_bwd_weight_config(M: int, I: int, O: int, weight_grad: bool = True) -> DenseBwdWeightConfig:
    """Blocks and reduction split of the weight gradient dW = dz^T @ x (and of d bias / d residual,
    which its first column of programs writes): a tile of up to 64 x 64 (O x I), the rows reduced
    in chunks of up to 64, split into slices as conv_bwd_config splits its reduction. Without dW
    (only d bias or d residual wanted) there is one program along I and no GEMM runs. Or the
    forced `dense` blocks and `dense_split`."""
    if _FORCED["dense"] is not None:
        block_m, block_i, block_o = _FORCED["dense"]
    else:
        block_o, block_i = padded(O, DENSE_MAX_COLUMNS), padded(I, DENSE_MAX_COLUMNS)
        block_m = padded(M, DENSE_MAX_ROW_CHUNK)
    chunks = _cdiv(M, block_m)
    tiles = _cdiv(O, block_o) * (_cdiv(I, block_i) if weight_grad else 1)
    split = _FORCED["dense_split"] or min(_cdiv(TARGET_PROGRAMS, max(tiles, 1)), chunks // MIN_CHUNKS_PER_SPLIT)
    split = max(1, min(split, chunks))
    per_split = _cdiv(max(chunks, 1), split)
    split = _cdiv(max(chunks, 1), per_split)
    return DenseBwdWeightConfig(block_o, block_i, block_m, split, per_split * block_m)
