"""pytest-benchmark suite of recgen (the grids live in recgen/tools/grids.py).

    python -m pytest bench --benchmark-json=out.json          # the quick grid on this device
    RECGEN_BENCH_FULL=1 python -m pytest bench                # the standard grid (GPU: long)
    python -m pytest bench --benchmark-disable                # smoke: every case runs once

Without CUDA the kernels run under Triton's interpreter (set here, before recgen's kernels
are imported) on the tiny CPU grid: CPU timings are not kernel speed.
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from recgen.tools.benchmark import (FAMILY_PROVIDERS, PASSES, build, environment, grid, make_step,  # noqa: E402
                                    provider_module)

DEVICE = "cuda" if CUDA else "cpu"
FULL = os.environ.get("RECGEN_BENCH_FULL") == "1"


def cases(family):
    return [pytest.param(c, id=c.label().replace(" ", "-")) for c in grid(family, quick=not FULL, cuda=CUDA)]


def run_case(benchmark, case, pass_, provider):
    """Time one (case, pass, provider) with pytest-benchmark; an unsupported provider is
    skipped with its reason (which pytest records)."""
    if provider == "compile" and not CUDA:
        pytest.skip("compile: not run on the CPU (compilation takes minutes on 2 cores)")
    torch_module, x = build(case, DEVICE)
    module = provider_module(provider, case, torch_module, pass_)
    if isinstance(module, str):
        pytest.skip(f"{provider}: {module}")
    if pass_ == "fwdbwd":
        x.requires_grad_()
    inner = make_step(module, x, pass_, case.family == "recurrent")

    def step():
        inner()
        if CUDA:
            torch.cuda.synchronize()

    import recgen
    with recgen.backend.backend("reference" if provider == "reference" else "auto"):
        benchmark.extra_info.update(environment(CUDA), provider=provider, pass_=pass_, op=case.op,
                                    dtype=case.dtype, shape=case.shape)
        benchmark.pedantic(step, rounds=20 if CUDA else 2, warmup_rounds=3 if CUDA else 1, iterations=1)


@pytest.fixture(params=PASSES)
def pass_(request):
    return request.param


def family_providers(family):
    """The providers `family` times (recgen.tools.benchmark.FAMILY_PROVIDERS), for a parametrize."""
    return FAMILY_PROVIDERS[family]
