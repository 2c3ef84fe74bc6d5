"""Where a run's checkpoints are in its workdir, and how to read what a step holds without restoring it.

    workdir/checkpoints/<step>/state/    the task's state (a flax state dict), orbax StandardSave
    workdir/checkpoints/<step>/config/   {"config": resolved run config, "num_classes", "image_shape",
                                         "class_names"}, JSON
    workdir/checkpoints_best/<step>/     the same, the best eval top-1 (config.keep_best)
    workdir/checkpoints_broken/<step>-*  unreadable steps moved aside on resume
    workdir/metrics.jsonl, events.out.tfevents.*   the run's reports (jaxnets.train.reporting)

orbax writes a step into a temporary directory, renames it, and writes its commit marker last; a step is
finished when the marker is there. Names of orbax's own files come from orbax. Paths are `etils.epath`
paths, as orbax's are, so a workdir may be on cloud storage. This module is the only one that knows this
layout; the trainer writes it (`manager.py`) and notebooks read it (`loading.py`: `jaxnets.load_checkpoint`).
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp
from etils import epath

from jaxnets.checkpoints.retries import is_not_found
from jaxnets.errors import CheckpointNotFoundError

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "checkpoints_best"
BROKEN_DIR = "checkpoints_broken"
STATE_ITEM = "state"
META_ITEM = "config"


def is_local(path) -> bool:
    return "://" not in os.fspath(path)


def absolute(path) -> epath.Path:
    """`path` as orbax needs it: absolute when local (relative to the current directory); URLs (gs://...) as
    they are. (os.path.abspath would turn "gs://bucket/run" into a local folder named "gs:".)"""
    return epath.Path(os.path.abspath(path)) if is_local(path) else epath.Path(path)


def checkpoint_dir(workdir) -> epath.Path:
    return absolute(workdir) / CHECKPOINT_DIR


def is_finished(step_dir) -> bool:
    """True once orbax has written the step's commit marker (its last write). Asked with stat, not exists: the
    cloud clients' exists() answers False on any error, and a marker that failed to answer is not a missing one
    (`retries.is_storage_failure`); that error is raised."""
    try:
        (epath.Path(step_dir) / ocp.path.atomicity.COMMIT_SUCCESS_FILE).stat()
    except Exception as e:
        if is_not_found(e):
            return False
        raise
    return True


def step_numbers(directory) -> list[int]:
    """The steps under a checkpoints directory, finished or not (not orbax's temporaries), ascending."""
    directory = epath.Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def temporaries(directory) -> list[epath.Path]:
    """orbax's temporary directories under `directory`: saves that never reached their rename."""
    directory = epath.Path(directory)
    return [directory / name for name in ocp.path.step.tmp_checkpoints(directory)] if directory.is_dir() else []


def resolve_step_dir(path) -> epath.Path:
    """A step directory (`.../checkpoints/<step>`), or a workdir / its `checkpoints/`: the newest finished step."""
    path = absolute(path)
    if (path / STATE_ITEM).is_dir():
        return path
    directory = path / CHECKPOINT_DIR
    directory = directory if directory.is_dir() else path
    steps = [s for s in step_numbers(directory) if is_finished(directory / str(s))]
    if not steps:
        raise CheckpointNotFoundError(f"no finished checkpoint in {path} (expected <workdir>/{CHECKPOINT_DIR}/<step>/)")
    return directory / str(steps[-1])


def read_meta(step_dir) -> dict:
    """The JSON saved beside the state: {"config": {...}, "num_classes": int, "image_shape": [H, W, C],
    "class_names": [str, ...]}."""
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
        return checkpointer.restore(epath.Path(step_dir) / META_ITEM)


def state_structure(step_dir) -> dict:
    """The saved state's tree from orbax's metadata: nested dicts of `ArrayMetadata` (shape, dtype) or None.
    Reads no array data."""
    handler = ocp.StandardCheckpointHandler()  # (a Checkpointer would warn: the trainer saves no per-item metadata)
    try:
        return handler.metadata(epath.Path(step_dir) / STATE_ITEM).tree
    finally:
        handler.close()
