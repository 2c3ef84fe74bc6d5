import atexit
import gc
import os
import shutil
import tempfile

# One persistent compilation cache for the session, inherited by every train.py the tests start: the same
# small models are compiled again and again (the quickstart restarted 6 times, runs of 2 processes). A
# cached executable is the one XLA compiled, so results are unchanged; a train.py launch takes 10 s, not 18.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxnets-tests-compilation-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# librosa (the sound front end's reference) has numba compile a dozen gufuncs when its utilities are first imported,
# and a fresh install, as CI's, has no numba cache: 21 s of CPU at numba's default -O3, 13 s at -O0 (a Xeon, numba
# 0.68). The suite calls none of them where speed matters; what they compute does not depend on the level (numba
# enables no fast-math by itself).
os.environ.setdefault("NUMBA_OPT", "0")

from helpers import cpu_xla_flags  # noqa: E402  (JAX reads XLA_FLAGS when it starts a backend, not on import)

# 8 CPU devices for the data-parallel tests (must be set before JAX starts); single-device code is
# unaffected: it runs on device 0. And compiled for compile speed (helpers.FAST_COMPILE): the tests run few steps
# of many programs, and on a CPU most of their time is XLA compiling. LLVM at -O0 (the recipes' two-step runs:
# 181 s -> 126 s) and XLA's older loop emitters instead of its MLIR fusion emitters (test_models, test_layers,
# test_enas_models and test_train_configs: 704 s -> 467 s of CPU on a Zen 3; a MobileNetV2 step's compile 7.3 s ->
# 1.9 s). XLA's own passes, hence the programs and their fusions, are the same; each fusion's loop is emitted by
# other code, so floats may differ in the last bit (contraction, the order within a vectorised loop). And LLVM's
# module in one piece: XLA splits it to compile the pieces on threads, which on the suite's 2 busy cores costs CPU
# and saves no time (four train steps' compiles 10.4 -> 8.0 s of CPU; benchmarks/results/test_suite.md). The tests
# that start train.py on fewer devices set their own XLA_FLAGS the same way (helpers.cpu_devices_env); the
# quickstart through SIGKILLs, whose 252 steps at -O0 would cost more than its compiles save, compiles as users do.
os.environ.setdefault("XLA_FLAGS", cpu_xla_flags(8))

import jax  # noqa: E402

import jaxnets.collector  # noqa: E402

# Shapes must match exactly; an accidental broadcast is a bug, not a convenience.
jax.config.update("jax_numpy_rank_promotion", "raise")

# The cycle collector tuned as train.py tunes it (jaxnets/collector.py): each worker imports TensorFlow, JAX and
# PyTorch and traces hundreds of programs. test_models.py + test_enas_models.py spent 7.3 s of 124 s of CPU collecting
# with the default threshold, 1.2 s like this (gc.callbacks). What the collection of the tests imported is frozen
# too: it lives until the worker ends, and a full collection need not rescan it.
jaxnets.collector.tune()


def pytest_collection_finish(session):
    gc.collect()  # (garbage frozen would never be freed)
    gc.freeze()


# Where the suite's time goes: with JAXNETS_TEST_CPU_LOG=FILE, each test's CPU seconds (this worker's threads plus
# the processes it started and waited for; setup, call and teardown together) are appended to FILE as
# "seconds nodeid worker start end" (the last two: wall-clock times, to see how the workers' queues end). Wall
# times under `-n 2` mostly measure which tests happened to run side by side; CPU time is what a cut saves.
if os.environ.get("JAXNETS_TEST_CPU_LOG"):
    import resource
    import time

    import pytest

    def _cpu_seconds() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        start, started = _cpu_seconds(), time.time()
        try:
            return (yield)
        finally:
            with open(os.environ["JAXNETS_TEST_CPU_LOG"], "a") as log:
                log.write(f"{_cpu_seconds() - start:.1f} {item.nodeid} {os.environ.get('PYTEST_XDIST_WORKER', '-')} "
                          f"{started:.1f} {time.time():.1f}\n")
