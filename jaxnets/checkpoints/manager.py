"""The run's checkpoints (layout: `layout.py`), saved and restored with orbax.

Saves are asynchronous (orbax copies the arrays to host memory, then writes them in a background thread)
and atomic (a temporary directory, a rename, the commit marker last). On disk the state is a plain nested
dict (`flax.serialization.to_state_dict`), so a notebook reads it without the optimizer.

Resume takes the newest step, in this order:
- a step that is unfinished (no commit marker) or unreadable (storage returned metadata or arrays that do not
  read, e.g. a truncated file) is BROKEN: moved to `checkpoints_broken/` with a warning once an older step restores, and
  that step is taken. orbax's stale temporaries from a killed save are removed (its `cleanup_tmp_directories`),
  with a warning;
- storage that fails to answer (an outage that outlives the clients' retries and ours, `retries.py`) breaks
  nothing: the run stops with StorageUnavailableError and nothing is moved;
- when committed steps exist and none of them restores, the run stops with UnrestorableCheckpointsError listing
  each step and why, and nothing is moved: starting again at step 0 would silently drop what the run had (a
  workdir whose only steps are unfinished saves had nothing: those are moved aside and the run starts afresh);
- a readable step that does not FIT the config (another model, or a train state of another structure:
  EMA turned on, another optimizer, clipping added, ...) stops the run with IncompatibleCheckpointError,
  naming what differs, before any checkpoint is moved, deleted or written (broken steps are moved only
  once a step fits). A mismatch is never corruption.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import uuid

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint._src.metadata import array_metadata_store  # the store orbax's default handler has (not exported)

from jaxnets.checkpoints import layout
from jaxnets.checkpoints.retries import read_with_retries
from jaxnets.data.datasets import DATA_STREAM_VERSION, STREAM_FIELDS, dataset_spec
from jaxnets.errors import (
    IncompatibleCheckpointError,
    StorageUnavailableError,
    UnrestorableCheckpointsError,
    WorkdirError,
)

log = logging.getLogger("jaxnets")

# Fields that change the parameters' structure: a checkpoint cannot continue under other values.
MODEL_FIELDS = ("model", "model_overrides", "dataset")
# config.audio's fields that make a sound dataset's network input (jaxnets.sound.frontend): a network trained on one
# spectrogram cannot continue on another, even where the parameters' shapes allow it.
SOUND_INPUT_FIELDS = tuple(f"audio.{name}" for name in (
    "sample_rate", "clip_seconds", "n_fft", "win_length", "hop_length", "n_mels", "fmin", "fmax", "amin", "top_db"))
# Fields that change the rest of the train state (optimizer slots, EMA, clipping and decay stages), named
# in the message when the saved state's structure differs from the config's.
STATE_FIELDS = ("task", "optimizer", "momentum", "ema_decay", "weight_decay", "weight_decay_mode",
                "grad_clip_norm", "grad_clip_per_tensor")


def check_writable(workdir, probe_bytes: int = 1 << 20) -> None:
    """Creates `workdir` and writes (then removes) a 1 MiB file in it: fails on a read-only or full disk."""
    directory = layout.absolute(workdir)
    probe = directory / f".write-probe-{uuid.uuid4().hex}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if layout.is_local(directory):
            with open(probe, "wb") as f:  # fsync: a full local disk must say so now, not at the first save
                f.write(b"\0" * probe_bytes)
                f.flush()
                os.fsync(f.fileno())
        else:
            probe.write_bytes(b"\0" * probe_bytes)
    except OSError as e:
        reason = e.strerror or str(e)
        raise WorkdirError(f"workdir {str(workdir)!r} is not writable ({reason}): choose another --workdir") from None
    finally:
        try:
            if probe.exists():
                probe.unlink()
        except OSError:
            pass


def model_differences(saved: dict, config: dict, fields: tuple[str, ...] = MODEL_FIELDS) -> list[str]:
    """The dotted names of the `fields` (and their sub-fields) whose values differ between two JSON-style configs."""

    def flatten(value, prefix):
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                out.update(flatten(v, f"{prefix}.{k}"))
            return out
        return {prefix: value}

    saved, config = _json(saved), _json(config)
    a, b = {}, {}
    for field in fields:
        a.update(flatten(saved.get(field), field))
        b.update(flatten(config.get(field), field))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def structure_differences(saved_tree, target_tree) -> list[str]:
    """What differs between a saved state's structure (orbax metadata) and the config's state (a tree of
    ShapeDtypeStruct), one phrase per top-level part of the state, e.g. "ema_params: 38 arrays not in the
    checkpoint"."""
    saved, target = _leaves(saved_tree), _leaves(target_tree)
    by_part: dict[str, dict[str, list[str]]] = {}
    for path in sorted(saved.keys() | target.keys()):
        if path not in saved:
            kind = "not in the checkpoint"
        elif path not in target:
            kind = "only in the checkpoint"
        elif saved[path] != target[path]:
            kind = "of another shape or dtype"
        else:
            continue
        by_part.setdefault(path.split(".")[0], {}).setdefault(kind, []).append(path)
    phrases = []
    for part, kinds in by_part.items():
        counts = [f"{len(kinds[kind])} {'array' if len(kinds[kind]) == 1 else 'arrays'} {kind}"
                  for kind in ("not in the checkpoint", "only in the checkpoint", "of another shape or dtype")
                  if kind in kinds]
        changed = kinds.get("of another shape or dtype")
        if changed:
            counts.append(f"e.g. {changed[0]} is {_describe(saved[changed[0]])} there, {_describe(target[changed[0]])} "
                          "here")
        phrases.append(f"{part}: {', '.join(counts)}")
    return phrases


def _leaves(tree, prefix: str = "") -> dict[str, tuple]:
    """{dotted path: (shape, dtype name)} of a nested dict/list tree; None and empty containers hold nothing."""
    if tree is None:
        return {}
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {prefix: (tuple(tree.shape), np.dtype(tree.dtype).name)}
    out = {}
    for key, value in items:
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _describe(leaf: tuple) -> str:
    shape, dtype = leaf
    return f"{dtype}{list(shape)}"


def _json(value):
    return json.loads(json.dumps(value))  # tuples -> lists, as they come back from disk


def _get(config: dict, dotted: str):
    value = config
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


# Below this, a replica's share of an array is written by the first replica alone (see `_register_array_handler`).
MIN_REPLICA_SLICE_BYTES = 1 << 20


@functools.cache  # once per process (after jax.distributed has started, which fixes process_count)
def _register_array_handler() -> None:
    """orbax's jax.Array handler, splitting a replicated array's write across replicas only where that pays.

    orbax's default on CPU and TPU has each of the R replicas write 1/R of every array, and cuts each share
    with its own compiled slice: one compile per array shape and replica count, ~0.06 s each, before the
    first save returns (20 s for a MobileNetV2 on 8 CPU devices; orbax turns it off on GPUs). The split
    only helps when the replicas live on several hosts, each writing its share, and when a share is big
    enough to outweigh its compile. The on-disk format is the same either way; this only chooses who
    writes. (The registry is orbax's process-wide one: StandardSave has no per-manager handler.)
    """
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
        use_replica_parallel=jax.process_count() > 1,
        min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES,
        array_metadata_store=array_metadata_store.Store(),
    ), override=True)


UNFINISHED = "no commit marker: the save did not finish"


class Checkpoints:
    """The run's CheckpointManager: `save` every N steps and at the end, `restore_latest` on start.

    On a pod every process makes one: orbax saves and restores with all of them, and every process takes the
    same decisions from the same (shared) files; process 0 alone moves broken steps, the others wait for it.
    """

    def __init__(self, workdir, *, max_to_keep: int, best_metric: str | None = None, is_main_process: bool = True):
        self.workdir = layout.absolute(workdir)
        self.directory = layout.checkpoint_dir(self.workdir)
        self.is_main_process = is_main_process
        if is_main_process:
            for path in layout.temporaries(self.directory):
                log.warning("checkpoint: removing %s, a save that never finished", path)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=True, create=True,
                                               cleanup_tmp_directories=True)
        _register_array_handler()
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self.best_metric = best_metric  # config.keep_best: also keep the best step by it, in checkpoints_best/
        self.best = None  # made at the first save, so that a refused resume creates nothing

    def _move_aside(self, broken: list[tuple[int, str]]) -> None:
        for step, why in broken:
            log.warning("checkpoint: skipping step %d (%s); moved to %s", step, why, layout.BROKEN_DIR)
            if self.is_main_process:
                target = self.workdir / layout.BROKEN_DIR / f"{step}-{uuid.uuid4().hex[:8]}"
                target.parent.mkdir(parents=True, exist_ok=True)
                (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:  # every process, every time: a process that saw nothing broken waits too
            multihost_utils.sync_global_devices("jaxnets: broken checkpoints moved aside")
        if broken:
            self.manager.reload()

    def restore_latest(self, abstract_state, config: dict, class_names: tuple[str, ...] = ()):
        """-> (step, state) from the newest good checkpoint, or None when there is none.

        `abstract_state` is the task's state of jax.ShapeDtypeStruct with the shardings to restore onto;
        `config` the run's resolved config as JSON. Raises IncompatibleCheckpointError when the newest
        readable step does not fit them, and UnrestorableCheckpointsError when committed steps exist and none
        restores; broken steps are moved aside only once a step fits (or when every one is an unfinished save),
        so a refusal moves nothing.
        """
        target = flax.serialization.to_state_dict(abstract_state)
        broken: list[tuple[int, str]] = []
        steps = read_with_retries(lambda: layout.step_numbers(self.directory), f"the steps in {self.directory}")
        for step in reversed(steps):
            step_dir = self.directory / str(step)
            if not read_with_retries(lambda d=step_dir: layout.is_finished(d), f"the commit marker of {step_dir}"):
                broken.append((step, UNFINISHED))
                continue
            try:  # storage that fails to answer raises StorageUnavailableError here: that step is not broken
                saved_meta, saved_structure = read_with_retries(
                    lambda d=step_dir: (layout.read_meta(d), layout.state_structure(d)), f"the metadata of {step_dir}")
                saved_config = saved_meta["config"]
            except StorageUnavailableError:
                raise
            except Exception as e:  # noqa: BLE001  metadata that storage returned and that does not parse: broken
                broken.append((step, f"metadata unreadable: {type(e).__name__}: {str(e)[:300]}"))
                continue
            _check_fits(step_dir, saved_config, config, saved_structure, target)
            _check_classes(step_dir, tuple(saved_meta["class_names"]), tuple(class_names))
            _check_stream(step_dir, saved_meta.get("data_stream_version"), saved_config, config)
            args = ocp.args.Composite(**{layout.STATE_ITEM: ocp.args.StandardRestore(target)})
            try:
                restored = read_with_retries(lambda s=step, a=args: self.manager.restore(s, args=a)[layout.STATE_ITEM],
                                             f"the arrays of {step_dir}")
            except StorageUnavailableError:
                raise
            except Exception as e:  # noqa: BLE001  the structure fits, so the data itself does not read
                broken.append((step, f"state unreadable: {type(e).__name__}: {str(e)[:300]}"))
                continue
            self._move_aside(broken)
            return step, flax.serialization.from_state_dict(abstract_state, restored)
        if any(why != UNFINISHED for _, why in broken):
            reasons = "; ".join(f"step {step}: {' '.join(why.split())}" for step, why in broken)
            raise UnrestorableCheckpointsError(
                f"none of the checkpoints in {self.directory} can be restored ({reasons}); no checkpoint was moved "
                f"or changed. Use another --workdir to start afresh, or move {self.directory} aside by hand to train "
                "this one from step 0")
        self._move_aside(broken)
        return None

    def save(self, step: int, state, meta: dict, eval_metrics: dict | None = None) -> None:
        """Starts an asynchronous save of `state` (already known to be finite) and the run's metadata."""
        args = ocp.args.Composite(**{
            layout.STATE_ITEM: ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
            layout.META_ITEM: ocp.args.JsonSave(meta),
        })
        if step not in self.manager.all_steps():
            self.manager.save(step, args=args)
        if self.best_metric and eval_metrics:
            if self.best is None:
                options = ocp.CheckpointManagerOptions(
                    max_to_keep=1, best_fn=lambda m: m[self.best_metric], best_mode="max",
                    enable_async_checkpointing=True, create=True, cleanup_tmp_directories=True,
                )
                self.best = ocp.CheckpointManager(self.workdir / layout.BEST_DIR, options=options)
            if step not in self.best.all_steps():
                self.best.save(step, args=args, metrics={self.best_metric: float(eval_metrics[self.best_metric])})

    def close(self) -> None:
        """Waits for the saves in flight."""
        self.manager.wait_until_finished()
        self.manager.close()
        if self.best is not None:
            self.best.wait_until_finished()
            self.best.close()


def _described(saved_config: dict, config: dict, keys: list[str]) -> list[str]:
    return [f"{k}: checkpoint {_get(saved_config, k)!r}, config {_get(config, k)!r}" for k in keys]


def _sound_differences(saved_config: dict, config: dict) -> list[str]:
    """The config.audio fields that differ, for a run on sound (older checkpoints, of images, have no section)."""
    if "audio" not in saved_config or dataset_spec(config["dataset"]).family != "audio":
        return []
    return model_differences(saved_config, config, ("audio",))


def _check_stream(step_dir, saved_version, saved_config: dict, config: dict) -> None:
    """A run resumes on the stream of batches and augmentation it had (the pipeline's version and the fields that
    make the stream), unless config.resume_other_data_stream says to go on regardless (with a warning)."""
    sound = [k for k in _sound_differences(saved_config, config) if k not in SOUND_INPUT_FIELDS + ("audio.eval_crops",)]
    differing = _described(saved_config, config, model_differences(saved_config, config, STREAM_FIELDS) + sound)
    if saved_version != DATA_STREAM_VERSION:
        written = "recorded none" if saved_version is None else f"version {saved_version}"
        differing.insert(0, f"the input pipeline's data stream: checkpoint {written}, now version "
                            f"{DATA_STREAM_VERSION}")
    if not differing:
        return
    what = f"{step_dir} was trained on another stream of batches or augmentation ({'; '.join(differing)})"
    if config.get("resume_other_data_stream"):
        log.warning("%s: resuming anyway (config.resume_other_data_stream): from here the run sees other batches "
                    "than an uninterrupted run would", what)
        return
    raise IncompatibleCheckpointError(
        f"{what}: resume with the checkpoint's values, or continue on the new stream with "
        f"--config.resume_other_data_stream=True, or use another --workdir (--config.init_from={step_dir} starts "
        "from its parameters); no checkpoint was moved or changed")


def _check_classes(step_dir, saved: tuple[str, ...], current: tuple[str, ...]) -> None:
    """The same labels must mean the same classes (a folder dataset whose class folders changed would train its
    outputs on other classes); a dataset that names no classes has none to compare."""
    if saved and current and saved != current:
        pairs = enumerate(itertools.zip_longest(saved, current, fillvalue="<none>"))
        changed = next(f"label {i}: checkpoint {a!r}, dataset {b!r}" for i, (a, b) in pairs if a != b)
        raise IncompatibleCheckpointError(
            f"{step_dir} was trained on other classes ({len(saved)} there, {len(current)} now; {changed}): use "
            "another --workdir, or --config.init_from to start from its parameters; no checkpoint was moved or changed"
        )


def _check_fits(step_dir, saved_config: dict, config: dict, saved_structure, target) -> None:
    """Raises IncompatibleCheckpointError (one line: what differs, what to do) unless the step fits the config."""
    todo = (f"use another --workdir, or --config.init_from={step_dir} to start from its parameters; "
            "no checkpoint was moved or changed")
    differing = model_differences(saved_config, config)
    differing += [k for k in _sound_differences(saved_config, config) if k in SOUND_INPUT_FIELDS]
    if differing:
        details = "; ".join(_described(saved_config, config, differing))
        raise IncompatibleCheckpointError(f"{step_dir} was written for another model or input ({details}): {todo}")
    structure = structure_differences(saved_structure, target)
    if structure:
        saved_json, config_json = _json(saved_config), _json(config)
        fields = [f"{k}: checkpoint {saved_json[k]!r}, config {config_json[k]!r}"
                  for k in STATE_FIELDS if saved_json[k] != config_json[k]]
        cause = f"; the config differs in {'; '.join(fields)}" if fields else ""
        raise IncompatibleCheckpointError(
            f"{step_dir} holds a train state of another structure ({'; '.join(structure)}){cause}: resume with "
            f"the checkpoint's values, or {todo}"
        )
