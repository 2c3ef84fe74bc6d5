"""Trains a jaxnets model: `python train.py --config configs/quickstart.py --workdir /tmp/run`.

Any config field overrides from the command line (`--config.num_train_steps=100`). Launch the same
command on every host of a pod (jaxnets/train/distributed.py).
"""

import logging
import os
import sys
from collections.abc import Mapping

import jaxnets.scratch_cache  # standard library only

# XLA:CPU allocates each step's scratch (activations kept for the backward pass, gradients: ~300 MiB for a
# ResNeXt-50 step at 64 px, batch 32) with malloc and frees it when the step ends; glibc serves blocks that large
# with a fresh mmap, so the kernel faults in and zeroes every 4 KiB page of it again each step (~79,000 faults,
# ~170 ms of kernel time per such step on the 2-core Xeon). glibc's tunable below asks for transparent huge pages
# on those mappings: 512 times fewer faults, the same memory. Tunables are read when a process starts, so train.py
# restarts itself once (same pid, same arguments) where the kernel gives huge pages on request only ("madvise",
# Debian's and Ubuntu's default). A GLIBC_TUNABLES that names the tunable already (=0: off) is left as it is.
MALLOC_HUGE_PAGES = "glibc.malloc.hugetlb=1"  # glibc >= 2.35
TRANSPARENT_HUGE_PAGES = "/sys/kernel/mm/transparent_hugepage/enabled"


def malloc_huge_pages_environment(environ: Mapping[str, str] = os.environ,
                                  transparent_huge_pages: str = TRANSPARENT_HUGE_PAGES,
                                  libc: str | None = None) -> dict[str, str] | None:
    """`environ` with glibc's malloc asking for huge pages, or None where that changes nothing or is not ours to
    set: a C library (`libc`, default this process's, "glibc 2.36") other than glibc >= 2.35, huge pages given
    always or never (the kernel's `transparent_huge_pages` setting), the tunable named in GLIBC_TUNABLES."""
    if libc is None:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""  # None where the C library is not glibc
    name, _, version = libc.partition(" ")
    if name != "glibc" or tuple(int(part) for part in version.split(".")[:2]) < (2, 35):
        return None
    try:
        with open(transparent_huge_pages) as f:
            on_request_only = "[madvise]" in f.read()
    except OSError:
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if not on_request_only or "glibc.malloc.hugetlb=" in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, MALLOC_HUGE_PAGES]))}


RESTARTED = "JAXNETS_TRAIN_PY_RESTARTED"  # in the environment of the process train.py restarted itself as


def restart_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """The environment train.py restarts itself in, None where it keeps its caller's: glibc's malloc asking for huge
    pages (`malloc_huge_pages_environment`), and XLA:CPU's scratch kept from one step to the next by a library
    preloaded (jaxnets/scratch_cache.py: without it each step's block, 2.8 GiB for the ENAS child, is faulted in
    and zeroed again; benchmarks/results/scratch_cache_ab_resnext29_avx2_twin.md)."""
    if environ.get(RESTARTED):  # once: even where the loader drops LD_PRELOAD (a setuid or setcap interpreter)
        return None
    environment = malloc_huge_pages_environment(environ) or environ
    environment = jaxnets.scratch_cache.preload_environment(environment, jaxnets.scratch_cache.library()) or environment
    return None if environment is environ else {**environment, RESTARTED: "1"}


if __name__ == "__main__" and (environment := restart_environment()) is not None:
    os.execve(sys.executable, sys.orig_argv, environment)  # before the imports below: they would run twice

import jaxnets.collector  # noqa: E402  (standard library only)

if __name__ == "__main__":
    jaxnets.collector.tune()  # before the imports below, which build most of what it would rescan

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import jaxnets.tasks  # noqa: E402, F401  (registers the built-in tasks, for a config saved by a run or written by hand)
import jaxnets.train  # noqa: E402
from jaxnets.errors import UserError  # noqa: E402
from jaxnets.train import distributed  # noqa: E402
from jaxnets.train.compilation_cache import use_compilation_cache  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard events and metrics.jsonl go.")
# Multi-host: omit all three where JAX detects the cluster (TPU pod, SLURM, ...); the same command runs on every host.
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for jax.distributed.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes the job has.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "Where JAX keeps compiled programs between runs, 'off' for none (default: "
    "$JAX_COMPILATION_CACHE_DIR, else on several hosts WORKDIR/compilation_cache, else "
    "~/.cache/jaxnets/compilation-cache; jaxnets/train/compilation_cache.py).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl's parser, except that a mistyped `--config.<key>` is one line, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except AttributeError as e:  # ml_collections: unknown key, with a "did you mean" hint
        hint = str(e).strip("'\"").replace("\\'", "'").replace("\\n", " ")
        sys.exit(f"train.py: unknown config field {hint}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # absl's handler formats the log lines (absl.app installs it); these two libraries are quieted to warnings:
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step by step at INFO
    logging.getLogger("jax").setLevel(logging.WARNING)  # "Unable to initialize backend 'tpu'" on every CPU run
    try:
        joined = distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        several_processes = joined and jax.process_count() > 1  # (a detected cluster may be one single-host TPU VM)
        if several_processes and jax.process_index() > 0:  # process 0 tells the story; the others warn only
            logging.getLogger("jaxnets").setLevel(logging.WARNING)
        # A resumed or repeated run loads its programs, compiles none; on several hosts from a cache they all read.
        use_compilation_cache(_COMPILATION_CACHE.value, shared_workdir=_WORKDIR.value if several_processes else None)
        jaxnets.train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except UserError as e:
        sys.exit(f"train.py: {e}")  # the user's to fix: one line, no traceback, exit code 1


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
