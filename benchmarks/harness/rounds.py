"""Interleaved rounds: every contender once per round, in order, so that the machine's drift (these VMs' speed
moves by tens of percent over minutes) falls on all of them alike; figures are medians over rounds."""

from __future__ import annotations

import ctypes
import gc
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def release_memory() -> None:
    """Returns freed heap to the OS between calls, so that no contender runs on another's freed pages."""
    gc.collect()
    if platform.system() == "Linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def freeze_loaded_objects() -> None:
    """Leaves every object alive now (modules, classes, functions: imports, never garbage) out of later garbage
    collections, so that `release_memory` walks only what the benchmark made since: with jax and torch loaded a
    full collection took 0.2 s here, 5.6 s of a --tiny cpu.py run. Call once, after the imports."""
    gc.collect()
    gc.freeze()


def timed(fn: Callable[[], Any], per: int = 1) -> Callable[[], float]:
    """A call of `fn` that returns its wall seconds divided by `per` (the steps or batches `fn` runs), then
    releases memory outside the clock."""

    def call() -> float:
        start = time.perf_counter()
        fn()
        seconds = (time.perf_counter() - start) / per
        release_memory()
        return seconds

    return call


@dataclass
class Rounds:
    values: dict[str, list]  # what each call returned, round by round
    errors: dict[str, str] = field(default_factory=dict)  # contenders dropped on an error `give_up` accepted

    def median(self, name: str) -> float:
        return statistics.median(self.values[name])

    def speedup(self, name: str, baseline: str) -> float:
        """Median seconds of `baseline` / median seconds of `name`: > 1 when `name` is faster."""
        return self.median(baseline) / self.median(name)


def interleave(calls: dict[str, Callable[[], Any]], rounds: int,
               give_up: Callable[[BaseException], bool] | None = None) -> Rounds:
    """Calls every entry once per round, in order, and keeps what each returns (seconds, with `timed`). An
    entry whose call raises an error that `give_up` accepts (out of memory, say) leaves the later rounds and
    keeps its error text; any other error propagates."""
    result = Rounds({name: [] for name in calls})
    live = dict(calls)
    for _ in range(rounds):
        for name, fn in list(live.items()):
            try:
                result.values[name].append(fn())
            except Exception as error:
                if give_up is None or not give_up(error):
                    raise
                result.errors[name] = str(error)[:300]
                del live[name]
                release_memory()
    return result


def alternate(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """A/B of programs in one process: every entry once per round, each timed call right after an untimed one of
    the same entry (its settling call), the order reversed every other round; wall seconds of each timed call."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in (names if r % 2 else names[::-1]):
            calls[name]()
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def under_settings(call: Callable[[], Any], apply: Callable[[Any], Any],
                   settings: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """For `alternate`: `call` once per named setting of a process-wide switch (`onednn.set_matmul_max_rows`,
    say), `apply(value)` right before each call."""

    def under(value):
        def run():
            apply(value)
            return call()
        return run

    return {name: under(value) for name, value in settings.items()}


def compared(seconds: dict[str, list[float]], candidate: str, baseline: str) -> dict:
    """`alternate`'s seconds of two entries: each one's median in ms (`<name>_ms`) and the median of the per-round
    ratios baseline / candidate (> 1: the candidate is faster)."""
    ratios = [b / c for b, c in zip(seconds[baseline], seconds[candidate], strict=True)]
    return {"seconds": seconds, f"{candidate}_ms": 1e3 * statistics.median(seconds[candidate]),
            f"{baseline}_ms": 1e3 * statistics.median(seconds[baseline]), "ratio": statistics.median(ratios)}
