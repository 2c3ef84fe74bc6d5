"""Checkpoints in `workdir/checkpoints/<step>`: the train state and the config, saved with orbax.

Saves are asynchronous (orbax copies the arrays to host memory, then writes them in a background thread)
and atomic: orbax writes a step into a temporary directory, renames it, and writes `commit_success.txt`
last. Resume takes the newest step that restores; a step without its commit marker, or one whose files
no longer read (truncated, deleted), is moved to `workdir/checkpoints_broken/` with a warning, and the
step before it is tried. Stale temporary directories from a killed save are removed with a warning.

On disk the state is a plain nested dict (`flax.serialization.to_state_dict`), so a notebook can read
it without the optimizer (`jaxnets.load_checkpoint`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid

import flax
import orbax.checkpoint as ocp

from jaxnets.checkpoint_loading import CHECKPOINT_DIR, COMMIT_MARKER, step_numbers

log = logging.getLogger("jaxnets")

BEST_DIR = "checkpoints_best"
BROKEN_DIR = "checkpoints_broken"
TMP_MARKER = ".orbax-checkpoint-tmp"
# Fields that change the parameters' structure: a checkpoint cannot continue under other values.
# (conv_lowering changes how convs are computed, never the parameters.)
MODEL_FIELDS = ("model", "model_overrides", "dataset")
_PORTABLE_OVERRIDES = ("conv_lowering",)


class WorkdirError(RuntimeError):
    """The workdir cannot hold checkpoints; raised before anything trains."""


class IncompatibleCheckpointError(ValueError):
    """The workdir's checkpoint was written for another model; the message names the fields."""


def check_writable(workdir: str, probe_bytes: int = 1 << 20) -> None:
    """Creates `workdir` and writes (then removes) a 1 MiB file in it: fails on a read-only or full disk."""
    probe = os.path.join(workdir, f".write-probe-{uuid.uuid4().hex}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * probe_bytes)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        reason = e.strerror or str(e)
        raise WorkdirError(f"workdir {workdir!r} is not writable ({reason}): choose another --workdir") from None
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def model_differences(saved: dict, config: dict) -> list[str]:
    """The dotted names of the MODEL_FIELDS whose values differ between two JSON-style configs."""

    def flatten(value, prefix):
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if k not in _PORTABLE_OVERRIDES:
                    out.update(flatten(v, f"{prefix}.{k}"))
            return out
        return {prefix: value}

    saved, config = _json(saved), _json(config)
    a, b = {}, {}
    for field in MODEL_FIELDS:
        a.update(flatten(saved.get(field), field))
        b.update(flatten(config.get(field), field))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _json(value):
    return json.loads(json.dumps(value))  # tuples -> lists, as they come back from disk


class Checkpoints:
    """The run's CheckpointManager: `save` every N steps and at the end, `restore_latest` on start."""

    def __init__(self, workdir: str, *, max_to_keep: int, keep_best: bool = False, is_main_process: bool = True):
        self.workdir = workdir
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
        self.is_main_process = is_main_process
        if is_main_process:
            self._remove_temporaries()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=True, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self.best = None
        if keep_best:  # the single best eval checkpoint, kept apart from the rolling ones
            best_options = ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m["eval_top1"], best_mode="max", enable_async_checkpointing=True,
                create=True,
            )
            self.best = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), BEST_DIR), options=best_options)

    def _remove_temporaries(self) -> None:
        if not os.path.isdir(self.directory):
            return
        for name in sorted(os.listdir(self.directory)):
            if TMP_MARKER in name:
                log.warning("checkpoint: removing %s, a save that never finished", os.path.join(self.directory, name))
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def _move_aside(self, step: int, why: str) -> None:
        source = os.path.join(self.directory, str(step))
        log.warning("checkpoint: skipping step %d (%s); moved to %s", step, why, BROKEN_DIR)
        if self.is_main_process:
            target = os.path.join(self.workdir, BROKEN_DIR, f"{step}-{uuid.uuid4().hex[:8]}")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(source, target)
        self.manager.reload()

    def restore_latest(self, abstract_state, config: dict):
        """-> (step, state) from the newest good checkpoint, or None when there is none.

        `abstract_state` is a TrainState of jax.ShapeDtypeStruct with the shardings to restore onto.
        Raises IncompatibleCheckpointError, naming the fields, if the checkpoint is of another model.
        """
        for step in reversed(step_numbers(self.directory)):
            if not os.path.exists(os.path.join(self.directory, str(step), COMMIT_MARKER)):
                self._move_aside(step, f"no {COMMIT_MARKER}: the save did not finish")
                continue
            try:
                saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
            except Exception as e:  # noqa: BLE001  any unreadable file means a broken step
                self._move_aside(step, f"config unreadable: {type(e).__name__}: {e}")
                continue
            differing = model_differences(saved["config"], config)
            if differing:
                details = "; ".join(f"{k}: checkpoint {_get(saved['config'], k)!r}, config {_get(config, k)!r}"
                                    for k in differing)
                raise IncompatibleCheckpointError(
                    f"{os.path.join(self.directory, str(step))} was written for another model ({details}): "
                    "use another --workdir, or --config.init_from to start from its parameters"
                )
            target = flax.serialization.to_state_dict(abstract_state)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
            except Exception as e:  # noqa: BLE001
                self._move_aside(step, f"state unreadable: {type(e).__name__}: {str(e)[:300]}")
                continue
            return step, flax.serialization.from_state_dict(abstract_state, restored["state"])
        return None

    def save(self, step: int, state, meta: dict, eval_metrics: dict | None = None) -> None:
        """Starts an asynchronous save of `state` (already known to be finite) and the run's metadata."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)), config=ocp.args.JsonSave(meta)
        )
        if step not in self.manager.all_steps():
            self.manager.save(step, args=args)
        if self.best is not None and eval_metrics and step not in self.best.all_steps():
            self.best.save(step, args=args, metrics={"eval_top1": float(eval_metrics["eval_top1"])})

    def close(self) -> None:
        """Waits for the saves in flight."""
        self.manager.wait_until_finished()
        self.manager.close()
        if self.best is not None:
            self.best.wait_until_finished()
            self.best.close()


def _get(config: dict, dotted: str):
    value = config
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value
