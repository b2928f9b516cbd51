"""The persistent kernels' grid barrier (kernels/recurrent/steps.py::_group_barrier) cannot hang:
on the CPU, under the interpreter, where the programs of a grid run one after another, so that
a group of two programs can only run out of polls (a deadlock without the bound).

The barrier itself, from a test kernel: the wait that runs out takes exactly its budget, every
later wait of the launch (any group) takes one poll, and the flag after the counters records
the first target that ran out. Then the launchers (recgen/ops/recurrent/persistent.py::run_persistent)
in the single-launch form the GPU runs (barrier_test_hook): a group of two programs returns and
raises naming the kernel, the grid and the plan; a grid of one program per group (the barrier
completes at its own arrival) computes what the reference does.

Every call runs in a thread with a deadline, so that a hang fails the test instead of stalling
the run (pytest-timeout is not installed)."""

import threading

import pytest
import torch
import triton
import triton.language as tl

import recgen
from recgen.backend import backend
from recgen.functional import run_direction
from recgen.kernels.recurrent.steps import BARRIER_RELEASED, _group_barrier
from recgen.ops import LAUNCH_COUNTS
from recgen.ops.common.tiling import forced_tiles
from recgen.ops.recurrent.persistent import barrier_test_hook
from recgen.testing import TOLERANCES, compare_direction, random_direction_inputs

DEADLINE_S = 300  # the machine may be loaded; a run that returns takes seconds
SPINS = 8  # the test budget: the 2**24 polls of the GPU would take the interpreter hours


def within_deadline(fn):
    """fn() in a daemon thread; fails if it has not returned after DEADLINE_S, re-raises what it raised."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread below
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), f"still waiting after {DEADLINE_S} s: the barrier hangs"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@triton.jit
def _barriers_kernel(counters_ptr, polls_ptr, spin_limit, N_BARRIERS: tl.constexpr):
    """Grid (columns, 1, groups): every program meets N_BARRIERS barriers of its group and
    writes the polls each took to polls_ptr[program, barrier]."""
    group = tl.program_id(2)
    program = group * tl.num_programs(0) + tl.program_id(0)
    for k in range(N_BARRIERS):
        polls = _group_barrier(counters_ptr, group, (k + 1) * tl.num_programs(0), spin_limit)
        tl.store(polls_ptr + program * N_BARRIERS + k, polls)


def run_barriers(grid: tuple, n_barriers: int = 5):
    counters = torch.zeros(grid[1] * grid[2] + 1, dtype=torch.int32)
    polls = torch.full((grid[0] * grid[2], n_barriers), -1, dtype=torch.int32)
    within_deadline(lambda: _barriers_kernel[grid](counters, polls, SPINS, N_BARRIERS=n_barriers))
    return counters, polls


def test_barrier_wait_is_bounded_and_a_timeout_releases_the_launch():
    """Two groups of two programs: the first program to run waits at its first barrier for the
    second member, which runs later: it takes its whole budget, then sets the flag (the target
    it waited for, 2) and releases every counter; all other waits of the launch, in both groups,
    take one poll."""
    counters, polls = run_barriers((2, 1, 2))
    assert counters[-1].item() == 2
    assert (counters[:-1] >= BARRIER_RELEASED.value).all(), counters
    assert sorted(polls.flatten().tolist()) == [1] * (polls.numel() - 1) + [SPINS], polls
    assert polls[:, 0].max().item() == SPINS and polls[:, 1:].max().item() == 1


def test_barrier_of_one_program_per_group_never_waits():
    counters, polls = run_barriers((1, 1, 3))
    assert counters.tolist() == [5, 5, 5, 0]  # five arrivals per group, no flag
    assert (polls == 1).all()


def module_call(cell: str, H: int, grad: bool):
    """A one-layer recgen module of `cell` on T=4, B=3, I=5, as a function: forward (and the
    backward of y.sum() when `grad`)."""
    torch.manual_seed(0)
    cls = {"lstm": recgen.nn.LSTM, "gru": recgen.nn.GRU, "rnn": recgen.nn.RNN}[cell]
    module, x = cls(5, H), torch.randn(4, 3, 5, requires_grad=grad)

    def call():
        with torch.set_grad_enabled(grad):
            return module(x)
    return call


# H=20: two column blocks of 16 hidden units, B=3: one batch tile, so one group of two programs.
TIMEOUT_PLAN = (r"grid \(2, 1, 1\), plan: 1 batch tiles of 16 rows, 2 column blocks of 16 hidden units, "
                r"1 groups per direction \(1 directions\), 4 warps\): the grid barrier of step 0 \(of 4\) ran out "
                rf"of its {SPINS} polls")


# After a timeout the programs compute from unwritten (NaN-poisoned) state: NumPy warns, by design.
GARBAGE = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@GARBAGE
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_forward_with_a_group_that_cannot_meet_raises(cell):
    before = LAUNCH_COUNTS[f"{cell}_fwd_persistent"]
    with forced_tiles(mode="persistent"), barrier_test_hook(SPINS):
        with pytest.raises(RuntimeError, match=rf"^{cell}_fwd_persistent \(_{cell}_fwd_persistent_kernel, "
                                               + TIMEOUT_PLAN):
            within_deadline(module_call(cell, 20, grad=False))
    assert LAUNCH_COUNTS[f"{cell}_fwd_persistent"] == before + 1  # one launch, which returned


@GARBAGE
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_backward_with_a_group_that_cannot_meet_raises(cell):
    """The forward one launch per step (no barrier), the backward's single launch times out."""
    with forced_tiles(mode="persistent"):
        y = within_deadline(module_call(cell, 20, grad=True))[0]
        before = LAUNCH_COUNTS[f"{cell}_bwd_persistent"]
        with barrier_test_hook(SPINS), pytest.raises(
                RuntimeError, match=rf"^{cell}_bwd_persistent \(_{cell}_bwd_persistent_kernel, " + TIMEOUT_PLAN):
            within_deadline(lambda: y.sum().backward())
    assert LAUNCH_COUNTS[f"{cell}_bwd_persistent"] == before + 1


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_single_launch_with_one_program_per_group_matches_reference(cell):
    """H=16: one column block; B=20: two batch tiles, so two groups of one program, whose
    barriers complete at their own arrival: the single launch each way (the GPU's form, the
    barrier and flag check included) against the float64 reference, every output and gradient."""
    gen = torch.Generator().manual_seed(4)
    inputs = random_direction_inputs(cell, 4, 20, 3, 16, generator=gen)
    base = cell.split("_")[0]
    before = dict(LAUNCH_COUNTS)
    with forced_tiles(mode="persistent"), barrier_test_hook(SPINS):
        errors = within_deadline(lambda: compare_direction(cell, inputs, lengths=torch.tensor([4, 1, 3] * 6 + [2, 4]),
                                                           reverse=True))
    for name in (f"{base}_fwd_persistent", f"{base}_bwd_persistent"):
        assert LAUNCH_COUNTS[name] == before.get(name, 0) + 1, name
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCES[torch.float32]}
    assert not bad, bad


def test_barrier_test_hook_rejects_no_budget():
    with pytest.raises(ValueError, match="spin_limit must be >= 1, got 0"):
        barrier_test_hook(0)


def test_without_the_hook_the_interpreter_launches_per_step():
    """The default under the interpreter stays one launch per step (no barrier to run out)."""
    before = LAUNCH_COUNTS["lstm_fwd_persistent"]
    inputs = random_direction_inputs("lstm", 4, 3, 5, 20, generator=torch.Generator().manual_seed(0))
    order = ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"]
    with forced_tiles(mode="persistent"), backend("triton"), torch.no_grad():
        run_direction("lstm", *[inputs[n] for n in order])
    assert LAUNCH_COUNTS["lstm_fwd_persistent"] == before + 4
