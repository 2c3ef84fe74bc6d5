"""The seam between what is trained (a task) and the loop that runs it, and the registry of tasks.

A task owns its state, its per-step computation, its evaluation, and its config section. The loop
(`jaxnets.train.loop`) owns everything else, the same for every task: the data stream and its position, the
cadence of logging, evaluation and checkpoints, preemption signals, the non-finite policy, checkpoints and
reporting. The engine never names a task: it asks the registry for `config.task`.

    register_task("distill", build_distillation)      # build(config, dataset_info, steps_per_epoch) -> Task
    config.task = "distill"                           # then train.py, build_trainer, ... train it

The built-in tasks (`jaxnets.tasks`) register themselves when `jaxnets.tasks` is imported, which
`jaxnets.config.base_config` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import ml_collections

from jaxnets.errors import ConfigError


class State(Protocol):
    """What the engine reads of a task's state (a `flax.struct.dataclass`, saved whole by the checkpoints).

    The model's variables are in `params` and `batch_stats` (and a parameter EMA, if the task keeps one, in
    `ema_params`): `jaxnets.load_checkpoint` reads those entries of any task's checkpoint, and
    `config.init_from` replaces them through `with_model_variables`."""

    step: Any  # int32 scalar: updates taken; the data stream's position
    params: Any
    batch_stats: Any

    def eval_variables(self) -> dict:
        """{"params", "batch_stats"} to evaluate with (the EMA's parameters, where the task keeps one)."""
        ...

    def with_model_variables(self, params, batch_stats) -> State:
        """This state with the model's variables replaced (`config.init_from`); the rest starts as it is."""
        ...


class Task(Protocol):
    # Train metrics that must be finite for a step's update to be kept, with their names in words for the
    # message: the non-finite policy (`nonfinite.py`) discards or stops on them.
    finite_metrics: dict[str, str]
    divergence_advice: str  # what to change when a step diverges, e.g. "lower config.learning_rate"
    best_metric: str  # the eval metric (higher is better) that config.keep_best keeps the best checkpoint by

    def init_state(self) -> State:
        """A fresh state, deterministic from the config's seed. Pure: the trainer jits it."""
        ...

    def train_step(self, state: State, batch: dict) -> tuple[State, dict]:
        """One update, per device under `jax.shard_map` over `parallel.DATA_AXIS`: `batch` is this device's
        shard; the returned state must be identical on every device and the metrics reduced over the axis."""
        ...

    def eval_step(self, state: State, batch: dict) -> dict:
        """Per device, like `train_step`: sums over this shard's unmasked examples, psum'd over the axis."""
        ...

    def eval_metrics(self, sums: dict) -> dict:
        """Host side: the sums of a whole eval pass -> the reported `eval_*` metrics."""
        ...


@runtime_checkable
class BetweenEpochs(Protocol):
    """A task that also learns after each epoch from the held-out split (`config.eval_split`, never the test
    set when it does), and leaves files in the workdir when the run completes.

    The loop feeds `epoch_update` an endless, unaugmented, shuffled stream of held-out batches (a function of
    (seed, update), like the train stream), `epoch_updates` of them after each epoch, before that epoch's
    evaluation and checkpoint, so a checkpoint holds its updates."""

    epoch_updates: int  # updates after each epoch
    epoch_batch_size: int  # held-out images per update, over all devices
    epoch_finite_metrics: dict[str, str]  # like Task.finite_metrics, for the updates between epochs
    epoch_divergence_advice: str
    records_file: str  # the workdir's JSON-lines log of each epoch's `describe_epoch` record and the final one

    def epoch_update(self, state: State, batch: dict) -> tuple[State, dict]:
        """Per device under shard_map, like `Task.train_step`."""
        ...

    def describe_epoch(self, state: State, updates: list[dict]) -> tuple[dict, dict]:
        """Host side: one epoch's update metrics -> (scalars for metrics.jsonl, a record for `records_file`)."""
        ...

    def complete(self, trainer, state: State, eval_batches, workdir: str) -> tuple[dict[str, str], dict]:
        """At the end of a completed run, on every process (it may compute collectively): -> ({file name: text}
        for the workdir, a last record for `records_file`). Only the main process writes them."""
        ...


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A registered task: how to build it and what it owns of the config."""

    name: str
    build: Callable[..., Task]  # (resolved config, jaxnets.data.DatasetInfo, steps_per_epoch) -> Task
    # The defaults of the task's own section, `config.<name>` (None: the task has none).
    config_section: Callable[[], ml_collections.ConfigDict] | None = None
    # Derives the task's values in the unlocked config after command-line overrides, before the dataset's
    # defaults are filled in (e.g. a held-out split); raises ConfigError naming a bad field.
    prepare: Callable[[ml_collections.ConfigDict], None] | None = None
    # Checks the resolved config for what this task needs: (config, device_count); raises ConfigError.
    check: Callable[[ml_collections.ConfigDict, int], None] | None = None


_TASKS: dict[str, TaskSpec] = {}


def register_task(name: str, build: Callable[..., Task], *, config_section=None, prepare=None, check=None) -> None:
    """Makes `config.task = name` train what `build(config, dataset_info, steps_per_epoch)` returns."""
    if name in _TASKS:
        raise ValueError(f"task {name!r} is registered twice")
    _TASKS[name] = TaskSpec(name, build, config_section, prepare, check)


def get_task(name: str) -> TaskSpec:
    if name not in _TASKS:
        raise ConfigError(f"config.task: unknown task {name!r}; registered: {', '.join(list_tasks()) or 'none'} "
                          "(jaxnets.config imports the built-in ones; register yours with "
                          "jaxnets.train.register_task)")
    return _TASKS[name]


def list_tasks() -> list[str]:
    return sorted(_TASKS)
