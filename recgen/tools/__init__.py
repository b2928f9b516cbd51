"""Tooling around recgen that the library never imports: the `recgen bench` grid and timing loop
(benchmark, grids) and its report (bench_report), the performance model (perf_model), the
ahead-of-time compile for sm_90 without a GPU (aot_compile) and the tile capture that makes the
launchers' choices with it (capture). Only the command line reaches it, lazily, for
`recgen bench`; bench/ and the tests import it directly (tests/test_layout.py checks)."""
