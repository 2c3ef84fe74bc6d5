"""JAX's persistent compilation cache, on by default for train.py: a resumed or repeated run loads its compiled
programs instead of compiling them again (the quickstart's train step: seconds on a CPU; a ResNeXt-50's: tens).

Where it lives, first match wins: train.py's `--compilation_cache=DIR` ("off": no cache; a URL such as gs://... as
given), then JAX's own $JAX_COMPILATION_CACHE_DIR, then, for a job of several processes, WORKDIR/compilation_cache,
else $XDG_CACHE_HOME/jaxnets/compilation-cache (~/.cache/... without it). On several hosts the cache must be one
that every host reads: JAX writes its entries from process 0 only, so in a cache of each host's own (a TPU VM's home
directory) the other hosts would compile every program at every start, and the job waits for the slowest; the
workdir is shared already, as the checkpoints need it. A cached program is the one XLA compiled for the same
program, compiler, devices and flags, so results are unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax

from jaxnets.checkpoints.layout import absolute, is_local

OFF = "off"
WORKDIR_CACHE = "compilation_cache"  # inside the workdir of a job of several processes


def cache_directory(flag: str | None, environ: Mapping[str, str] = os.environ, *,
                    shared_workdir: str | None = None) -> str | None:
    """The directory the cache uses for train.py's `--compilation_cache` value (None: off); `shared_workdir`: the
    run's workdir where several processes share the job."""
    if flag == OFF:
        return None
    if flag:
        return str(absolute(os.path.expanduser(flag)))
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return environ["JAX_COMPILATION_CACHE_DIR"]
    if shared_workdir is not None:
        return str(absolute(shared_workdir) / WORKDIR_CACHE)
    cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "jaxnets", "compilation-cache")


def use_compilation_cache(flag: str | None, *, shared_workdir: str | None = None) -> str | None:
    """Points JAX's persistent compilation cache at `cache_directory(flag, shared_workdir=...)`, or turns it off;
    returns the directory. Call before anything compiles."""
    directory = cache_directory(flag, shared_workdir=shared_workdir)
    jax.config.update("jax_enable_compilation_cache", directory is not None)
    if directory is not None:
        jax.config.update("jax_compilation_cache_dir", directory)
        if not is_local(directory):
            # JAX also hands XLA a folder inside it for the GPU autotuner's results, which XLA's own file layer
            # writes, and it knows no gs:// (the compiled programs themselves go through etils.epath, which does).
            jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
    return directory
