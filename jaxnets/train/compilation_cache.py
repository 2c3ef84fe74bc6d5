"""JAX's persistent compilation cache, on by default for train.py: a resumed or repeated run loads its compiled
programs instead of compiling them again (the quickstart's train step: seconds on a CPU; a ResNeXt-50's: tens).

Where it lives, first match wins: train.py's `--compilation_cache=DIR` ("off": no cache), then JAX's own
$JAX_COMPILATION_CACHE_DIR, then $XDG_CACHE_HOME/jaxnets/compilation-cache (~/.cache/... without it). A cached
program is the one XLA compiled for the same program, compiler, devices and flags, so results are unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax

OFF = "off"


def cache_directory(flag: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The directory the cache uses for train.py's `--compilation_cache` value (None: off)."""
    if flag == OFF:
        return None
    if flag:
        return os.path.abspath(os.path.expanduser(flag))
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return environ["JAX_COMPILATION_CACHE_DIR"]
    cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "jaxnets", "compilation-cache")


def use_compilation_cache(flag: str | None) -> str | None:
    """Points JAX's persistent compilation cache at `cache_directory(flag)`, or turns it off; returns the directory.
    Call before anything compiles."""
    directory = cache_directory(flag)
    jax.config.update("jax_enable_compilation_cache", directory is not None)
    if directory is not None:
        jax.config.update("jax_compilation_cache_dir", directory)
    return directory
