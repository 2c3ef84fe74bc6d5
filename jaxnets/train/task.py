"""The seam between what is trained (a task) and the loop that runs it.

A task owns its state, its per-step computation and its evaluation. The loop (`jaxnets.train.loop`) owns
everything else, the same for every task: the data stream and its position, the cadence of logging,
evaluation and checkpoints, preemption signals, the non-finite policy, checkpoints and reporting.
`jaxnets.train.build_trainer` puts one task and the data-parallel machinery together.

Supervised classification (`jaxnets.train.classification.ClassificationTask`) is the first task; the ENAS
search (`jaxnets.nas.search.SearchTask`) is the second, and also learns between epochs (`BetweenEpochs`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

State = Any  # a flax.struct dataclass with an int32 scalar `step`; saved whole (flax state dict) by the loop


class Task(Protocol):
    # Train metrics that must be finite for a step's update to be kept, with their names in words for the
    # message: the non-finite policy (the step wrapper of build_trainer discards, the loop counts and stops).
    finite_metrics: dict[str, str]
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
    set when it does: the ENAS controller), and leaves files in the workdir when the run completes.

    The loop feeds `epoch_update` an endless, unaugmented, shuffled stream of held-out batches (a function of
    (seed, update), like the train stream), `epoch_updates` of them after each epoch, before that epoch's
    evaluation and checkpoint, so a checkpoint holds its updates."""

    epoch_updates: int  # updates after each epoch
    epoch_batch_size: int  # held-out images per update, over all devices
    records_file: str  # the workdir's JSON-lines log of each epoch's `describe_epoch` record and the final one

    def epoch_update(self, state: State, batch: dict) -> tuple[State, dict]:
        """Per device under shard_map, like `Task.train_step`."""
        ...

    def describe_epoch(self, state: State, updates: list[dict]) -> tuple[dict, dict]:
        """Host side: one epoch's update metrics -> (scalars for metrics.jsonl, a record for `records_file`)."""
        ...

    def finish(self, trainer, state: State, eval_batches, workdir: str) -> tuple[dict[str, str], dict]:
        """At the end of a completed run, on every process (it may compute collectively): -> ({file name: text}
        for the workdir, a last record for `records_file`). Only the main process writes them."""
        ...
