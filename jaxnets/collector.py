"""Python's cycle collector set for a process that builds a few hundred thousand objects and keeps them until it
exits (TensorFlow's and JAX's modules, traced steps, jit caches): train.py and the test workers call `tune()` before
their heavy imports (standard library only here, so that it can come first).

By default the collector runs every 700 new objects and its full collections rescan every survivor: 1.1-1.2 s of a
warm quickstart launch's CPU (`gc.callbacks`, Intel Xeon model 207, 2026-12-06), 0.4 s collecting every 20,000. At
exit the interpreter collected again what it was about to free: 1.5-2 s of wall clock (1 s of CPU), 0.2-0.4 s with
what is alive frozen first. Garbage is collected all the same, a little later; a 300-step quickstart peaked at the
same RSS (benchmarks/results/test_suite.md).
"""

import atexit
import gc

THRESHOLD = (20_000, 10, 10)


def tune() -> None:
    gc.set_threshold(*THRESHOLD)
    # atexit runs its handlers last registered first: registered before the libraries' own, this one runs after
    # theirs, just before the interpreter's teardown.
    atexit.register(gc.freeze)
