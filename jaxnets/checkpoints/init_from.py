"""`config.init_from`: a run that starts from pretrained model variables (its step, optimizer and rng anew).

The source is another run (a workdir or one of its steps) or a PyTorch state dict of the same architecture
(torchvision's or timm's key names; .pth, .safetensors or .npz, see `jaxnets.convert`). Everything is checked
against the run's state before anything compiles or is written: the architecture must be the run's, and only the
classifier may differ, in its number of classes, for a run on another dataset. That classifier starts afresh.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import jax
import numpy as np
from etils import epath
from flax import traverse_util

from jaxnets.checkpoints.layout import read_meta, resolve_step_dir, state_structure
from jaxnets.checkpoints.loading import restore_variables, tuples_from_json
from jaxnets.checkpoints.manager import model_differences
from jaxnets.convert.files import is_weight_file, load_arrays
from jaxnets.convert.torchvision import convert_state_dict, torch_keys
from jaxnets.errors import CheckpointNotFoundError, IncompatibleCheckpointError
from jaxnets.models import model_entry

log = logging.getLogger("jaxnets")

VARIABLES = ("params", "batch_stats")  # what a source gives: the model's parameters and BN statistics
# The fields of the run's config that fix the network's architecture (the dataset may differ: the class count
# then only changes the classifier).
ARCHITECTURE_FIELDS = ("model", "model_overrides")


@dataclasses.dataclass(frozen=True)
class InitSource:
    """What `config.init_from` names, checked against the run's state: `read(sharding)` gives its variables
    ({"params", "batch_stats"}, the fresh ones kept where `fresh` says)."""

    name: str  # the step directory or file, for messages
    shapes: dict[tuple[str, ...], tuple[int, ...]]  # the source's flattened variables: path -> shape
    fresh: tuple[tuple[str, ...], ...]  # paths the run initialises itself: a classifier of another class count
    read: Callable[[jax.sharding.Sharding], dict]


def init_source(path, config: dict, target_state) -> InitSource:
    """The source `config.init_from` (`path`) names, checked against `target_state` (the run's abstract state;
    `config`: its resolved config as JSON). CheckpointNotFoundError without a finished checkpoint or file there;
    IncompatibleCheckpointError for another architecture, naming what differs."""
    path = str(path)
    target = _flat_shapes({k: getattr(target_state, k) for k in VARIABLES})
    if is_weight_file(path):
        source = _weight_file(path, config)
    else:
        source = _checkpoint(path, config)
    classifier = ("params", *model_entry(config["model"]).classifier.split("/"))
    fresh = _fresh_classifier(source.name, source.shapes, target, classifier)
    return dataclasses.replace(source, fresh=fresh)


def initialise_from(state, source: InitSource, sharding):
    """`state` (a fresh one) with `source`'s params and BN statistics, placed with `sharding`; the paths in
    `source.fresh` keep their fresh values. Logs one line saying what was loaded and what was not."""
    loaded = _flat(source.read(sharding))
    current = _flat({k: getattr(state, k) for k in VARIABLES})
    merged = {p: current[p] if p in source.fresh else _as_dtype(loaded[p], current[p].dtype) for p in current}
    variables = traverse_util.unflatten_dict(merged)
    new = ""
    if source.fresh:  # one module: "fc (bias 4, kernel 2048x4)"
        arrays = ", ".join(f"{p[-1]} {'x'.join(map(str, current[p].shape))}" for p in source.fresh)
        new = f"; new: {'/'.join(source.fresh[0][1:-1])} ({arrays})"
    log.info("config.init_from: loaded %d arrays from %s%s; step, optimizer and rng start afresh",
             len(merged) - len(source.fresh), source.name, new)
    return state.with_model_variables(params=variables.get("params", {}),
                                      batch_stats=variables.get("batch_stats", {}))


def _checkpoint(path: str, config: dict) -> InitSource:
    try:
        step_dir = resolve_step_dir(path)
    except CheckpointNotFoundError as e:
        raise CheckpointNotFoundError(f"config.init_from: {e}") from None
    differing = model_differences(read_meta(step_dir)["config"], config, fields=ARCHITECTURE_FIELDS)
    if differing:
        raise IncompatibleCheckpointError(
            f"config.init_from: {step_dir} is of another model (differs in {', '.join(differing)})")
    saved = state_structure(step_dir)
    shapes = _flat_shapes({k: saved.get(k) or {} for k in VARIABLES})

    def read(sharding):
        restored = restore_variables(step_dir, sharding)
        return {k: restored[k] for k in VARIABLES}

    return InitSource(str(step_dir), shapes, (), read)


def _weight_file(path: str, config: dict) -> InitSource:
    if not epath.Path(path).is_file():
        raise CheckpointNotFoundError(f"config.init_from: weights file {path} does not exist")
    model = config["model"]
    try:
        torch_keys(model)  # a model without a PyTorch counterpart, before reading the file
        overrides = tuples_from_json(config.get("model_overrides") or {})
        variables = convert_state_dict(model, load_arrays(path), **overrides)
    except ValueError as e:
        raise IncompatibleCheckpointError(f"config.init_from: {path}: {e}") from None
    arrays = {k: jax.tree.map(np.asarray, variables.get(k, {})) for k in VARIABLES}
    return InitSource(path, _flat_shapes(arrays), (), lambda sharding: jax.device_put(arrays, sharding))


def _fresh_classifier(name: str, source: dict, target: dict,
                      classifier: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The target paths that start afresh: the model's classifier (`classifier`: its module's path) when its class
    count differs from the source's (its arrays differ in their last dimension only, all by the same counts). Any
    other difference is refused, naming the first differing variable."""
    missing = sorted(target.keys() - source.keys())
    if missing:
        raise IncompatibleCheckpointError(
            f"config.init_from: {name} has no {'/'.join(missing[0])} (and {len(missing) - 1} more of the run's "
            f"{len(target)} arrays): is it of this architecture?")
    unused = sorted(source.keys() - target.keys())
    if unused:
        raise IncompatibleCheckpointError(
            f"config.init_from: {name} has {'/'.join(unused[0])}, which this run's model does not (and "
            f"{len(unused) - 1} more): is it of this architecture?")
    differing = [p for p in sorted(target) if source[p] != target[p]]
    modules = {p[:-1] for p in differing}
    counts = {(source[p][-1], target[p][-1]) for p in differing}
    is_classifier = (modules == {classifier} and len(counts) == 1
                     and all(source[p][:-1] == target[p][:-1] for p in differing))
    if differing and not is_classifier:
        first = differing[0]
        raise IncompatibleCheckpointError(
            f"config.init_from: {'/'.join(first)} is {list(source[first])} in {name} and {list(target[first])} "
            "in this run: only the classifier may differ (in its number of classes)")
    return tuple(differing)


def _as_dtype(array, dtype):
    return array if array.dtype == dtype else array.astype(dtype)  # (a file's float16, say)


def _flat(tree: dict) -> dict:
    return traverse_util.flatten_dict(tree) if tree else {}


def _flat_shapes(tree: dict) -> dict[tuple[str, ...], tuple[int, ...]]:
    flat = traverse_util.flatten_dict(tree) if tree else {}  # (orbax's ArrayMetadata and ShapeDtypeStruct: leaves)
    return {p: tuple(v.shape) for p, v in flat.items() if v is not None}
