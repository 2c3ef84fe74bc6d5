"""Each framework in a process of its own, its calls timed on request from the benchmark's process.

A user runs one framework per process, and two frameworks in one process change each other's speed. Measured
on the 2-core Xeon (AVX-512), float32, batch 32 at 64x64: PyTorch's ResNeXt-50 train step took 0.54-0.56 s in
a process of its own and 0.64-0.68 s once a single jaxnets step had run beside it; with ONEDNN_MAX_CPU_ISA=AVX2,
jaxnets' ResNeXt-29 step took 14.8-15.4 s alone and 15.6-16.5 s next to PyTorch's. (Likely cause: in one process
jaxnets' oneDNN binds to the libgomp PyTorch ships instead of the system's, and one OpenMP runtime then serves
PyTorch's team and the teams jaxnets' convolutions start on XLA's threads: more threads than cores, so each
spins less before sleeping.)

A worker builds its framework's calls, warms them up, reports what it was asked to (compile times), then runs
one call per request and answers its wall seconds. The parent interleaves the requests across the workers
(`harness.rounds.interleave`), so one framework computes at a time while the other waits on its pipe, and the
machine's drift over minutes falls on both alike. Nothing is freed between a worker's calls: a framework reuses
its own heap from one step to the next, as in a training loop.
"""

from __future__ import annotations

import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

PREFIX = "BENCHMARK_WORKER "
# How long the OpenMP threads of a worker that has just answered may keep a core: both frameworks' oneDNN run on
# libgomp, whose idle threads spin before they sleep (GOMP_SPINCOUNT, 300,000 pauses by default: ~14 ms on CPUs
# whose pause takes 140 cycles). A call of a few milliseconds timed right after the other worker's ran about 2x
# slower for it on the 2-core VMs (cpu.py's grouped 3x3 with AVX2: 3.7-3.9 ms alone in a process, 7.4-8.4 ms so,
# 4.3-6.5 ms after one untimed call of its own).
OPENMP_SPIN_SECONDS = 0.1


def serve(calls: dict[str, Callable[[], Any]], info: dict) -> None:
    """In the worker: reports `info`, then runs the call named by each line of stdin and answers its wall
    seconds, with the minor page faults and kernel CPU seconds of this process during the call, until stdin
    closes. A line "NAME<tab>N" runs the call N times back to back and answers the median of their seconds, and
    the faults and kernel seconds per call. An error ends the worker (its traceback on stderr)."""
    _reply({"ready": info})
    for line in sys.stdin:
        name, _, count = line.rstrip("\n").partition("\t")
        call, repeat = calls[name], int(count or 1)
        seconds = []
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(repeat):
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        _reply({"seconds": statistics.median(seconds), "minor_faults": (after.ru_minflt - before.ru_minflt) / repeat,
                "system_seconds": (after.ru_stime - before.ru_stime) / repeat})


def _reply(message: dict) -> None:
    print(PREFIX + json.dumps(message), flush=True)  # other lines on stdout (a library's prints) are skipped


class Worker:
    """`python ARGUMENTS` as a worker that `serve`s, in `environment` (None: ours); `info` is what it reported
    once ready, `last` its answer to the latest call (seconds, minor_faults, system_seconds). Its stderr is ours."""

    def __init__(self, arguments: list[str], environment: dict[str, str] | None = None):
        self.arguments = arguments
        self.process = subprocess.Popen([sys.executable, *arguments], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=environment)
        self.info = self._read()["ready"]
        self.last: dict = {}

    def timed(self, name: str, untimed_before: int = 0, answers: list[dict] | None = None,
              quiet_before: float = 0.0, repeat: int = 1) -> Callable[[], float]:
        """A call that has the worker run `name` once and returns its wall seconds there; with `untimed_before`,
        after running it that many times untimed, so that the timed run follows the framework's own, as a step
        follows a step in a training loop (see `SETTLING` in cpu.py). `quiet_before`: seconds to wait first, for
        the other workers' OpenMP threads to stop spinning (see `OPENMP_SPIN_SECONDS`). `repeat`: the timed run
        is that many runs back to back, and its seconds their median. `answers`: each timed run's whole answer
        (seconds, minor_faults, system_seconds) is appended to it."""

        def run(times: int = 1) -> float:
            self.process.stdin.write(name + (f"\t{times}" if times > 1 else "") + "\n")
            self.process.stdin.flush()
            self.last = self._read()
            return self.last["seconds"]

        def call() -> float:
            time.sleep(quiet_before)
            for _ in range(untimed_before):
                run()
            seconds = run(repeat)
            if answers is not None:
                answers.append(self.last)
            return seconds

        return call

    def _read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX):])
        raise RuntimeError(f"benchmark worker {' '.join(self.arguments[1:])} exited with status "
                           f"{self.process.wait()} (its error is above)")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def workers(arguments: dict[str, list[str]], environments: dict[str, dict[str, str] | None] | None = None):
    """A `Worker` per name, in its entry of `environments` (default: ours), started in order; all closed on
    leaving, also when one of them failed to start."""
    environments = environments or {}
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(Worker(args, environments.get(name))) for name, args in arguments.items()}
