"""XLA:CPU's scratch kept between calls: csrc/scratch_cache.c, which train.py preloads into its own process.

XLA:CPU allocates each execution's temporary block (a training step's activations and gradients, an eval
forward's layer outputs) and frees it when the execution ends; glibc maps a block that large afresh each time, and
the kernel faults in and zeroes every page of it again. The preloaded library keeps a freed block of 32 MiB or more
for the next request of its size (see its header). Standard library only: train.py reads this before its imports.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping

LIBRARY = "libjaxnets_scratch_cache.so"


def library() -> str | None:
    """The built library's path; None where it was not built (no C compiler, not Linux) or is not installed."""
    try:
        files = importlib.metadata.distribution("jaxnets").files or ()
    except importlib.metadata.PackageNotFoundError:
        return None
    path = next((f.locate() for f in files if f.name == LIBRARY), None)
    return str(path) if path is not None and os.path.isfile(path) else None


def preload_environment(environ: Mapping[str, str], path: str | None) -> dict[str, str] | None:
    """`environ` with the library at `path` preloaded; None where that is not ours to set: no library, or an
    LD_PRELOAD of the caller's own (an allocator of their choice, or this library already)."""
    if path is None or environ.get("LD_PRELOAD"):
        return None
    return {**environ, "LD_PRELOAD": path}
