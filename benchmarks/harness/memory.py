"""Peak host memory, measured in a child process that runs nothing but the measured steps, so that two
frameworks' peaks never mix. (Device peaks come from each framework's allocator: see runners.py.)

The child is a script that loads only the framework it measures (benchmarks/memory_probe.py, for cpu.py): a
PyTorch user's process holds no JAX, a jaxnets user's no PyTorch. It prints its result with `report_to_parent`, the
parent reads it with `in_child`.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

from harness.rounds import release_memory

PREFIX = "MEMORY_PROBE "


def peak_rss(step: Callable[[], None], steps: int = 3) -> dict:
    """The peak RSS of `steps` calls of `step`, in this process, which is expected to have run it once already
    (so that the state it keeps between calls, such as PyTorch's lazily created momentum buffers, exists).

    Frees unused heap, resets the kernel's peak-RSS mark, reads the RSS, runs the steps and reads the peak
    again (VmHWM). Reported: `step_extra_mib` = peak during the steps - RSS just before them (gradients,
    activations, scratch); `peak_mib` = that peak itself (also the runtime, the code, parameters and optimizer
    state); `setup_peak_mib` = the peak before the reset (building, compiling, the warm-up).
    The peaks are VmHWM (/proc/self/status), not ru_maxrss: Linux carries the pre-exec address space's
    high-water mark into a spawned child's ru_maxrss, so a child's ru_maxrss starts at its parent's peak RSS
    (measured: a child of a 500 MiB parent reports 513 MiB, VmHWM 13 MiB). Without /proc the peak falls back
    to ru_maxrss, marked by `peak_reset: false`.
    """
    release_memory()
    setup_peak_kib = _proc_status_kib("VmHWM")
    peak_reset = _reset_peak_rss()
    before_kib = _proc_status_kib("VmRSS") or 0
    for _ in range(steps):
        step()
    peak_kib = _proc_status_kib("VmHWM") if peak_reset else None
    if peak_kib is None:  # no /proc: ru_maxrss, setup included (and, see above, maybe the parent's peak)
        peak_reset, peak_kib = False, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_mib": peak_kib / 1024,
        "rss_before_steps_mib": before_kib / 1024,
        "step_extra_mib": (peak_kib - before_kib) / 1024,
        "setup_peak_mib": None if setup_peak_kib is None else setup_peak_kib / 1024,
        "peak_reset": peak_reset,
        "steps": steps,
    }


def report_to_parent(result: dict) -> None:
    print(PREFIX + json.dumps(result), flush=True)


def in_child(arguments: list[str], environment: dict[str, str] | None = None) -> dict:
    """Runs `python ARGUMENTS` in `environment` (None: ours) and returns what it passed to `report_to_parent`, or
    {"error": its output's end}."""
    result = subprocess.run([sys.executable, *arguments], capture_output=True, text=True, env=environment)
    for line in result.stdout.splitlines()[::-1]:
        if line.startswith(PREFIX):
            return json.loads(line[len(PREFIX):])
    return {"error": f"exit status {result.returncode}: {(result.stderr or result.stdout)[-1500:]}"}


def share_compilations() -> str:
    """Lets this process load the executables its children compiled instead of compiling them again (a minute
    for the released ENAS child's train step): a persistent compilation cache private to this run, inherited
    by the children. A caller's own $JAX_COMPILATION_CACHE_DIR is used as it is; compile times may then be
    loads of earlier runs' entries. Returns what was done, for the results."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return "caller's $JAX_COMPILATION_CACHE_DIR (compile times may be cache loads)"
    import jax  # here, not above: the PyTorch memory probe imports this module and must not load JAX

    path = tempfile.mkdtemp(prefix="jaxnets-benchmark-compilations-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path  # for the children
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return "private to this run: the memory probes compile each train step first, this process loads it"


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark (VmHWM) of this process: `echo 5 > /proc/self/clear_refs`."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
