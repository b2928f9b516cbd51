"""A tile capture: the launchers' tile choices made without a GPU, every launch recorded instead
of run (bench/config_resources.py, tests/test_config_table.py).

Inside capture(), CPU tensors go to the kernels' launchers (recgen.backend.kernels_on_cpu), and
every candidate the tile rule (recgen/ops/common/tiling.py) asks about is compiled for sm_90 on
this machine (recgen/tools/aot_compile.py: launch_resources) or looked up in a committed
resource table. The library reaches the Capture only through the hook it installs
(tiling.recording): it calls its resources() and appends to its decisions and launches.
"""

from __future__ import annotations

import contextlib
import time

from recgen import backend
from recgen.backend import interpreting
from recgen.ops.common import tiling
from recgen.ops.common.kernel_identity import identity
from recgen.tools.aot_compile import launch_resources


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
        key = identity(kernel, args)
        if key not in self.compiled:
            if self.table is not None:
                if key not in self.table:
                    raise LookupError(f"the resource table has no entry for {kernel.__name__} with {dict(key[1])}; "
                                      "recompute it with bench/config_resources.py")
                self.compiled[key] = self.table[key]
            else:
                start = _cpu_seconds()
                self.compiled[key] = launch_resources(kernel, args, self.target)
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
    sm_`target` (or looked up in `table`: recgen.ops.common.kernel_identity.identity ->
    resources), and launches are recorded, not run (outputs hold garbage). Yields the Capture."""
    if interpreting():
        raise RuntimeError("recgen.tools.capture compiles the kernels: run it without TRITON_INTERPRET=1")
    state = Capture(table, target)
    with tiling.recording(state), backend.kernels_on_cpu():
        yield state
