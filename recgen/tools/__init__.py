"""Tooling around recgen that the library never imports: the `recgen bench` grid and timing loop
(benchmark) and its report (bench_report). Only the command line reaches it, lazily, for
`recgen bench`; bench/ and the tests import it directly."""
