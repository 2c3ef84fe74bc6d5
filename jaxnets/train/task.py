"""The seam between what is trained (a task) and the loop that runs it.

A task owns its state, its per-step computation and its evaluation. The loop (`jaxnets.train.loop`) owns
everything else, the same for every task: the data stream and its position, the cadence of logging,
evaluation and checkpoints, preemption signals, the non-finite policy, checkpoints and reporting.
`jaxnets.train.build_trainer` puts one task and the data-parallel machinery together.

Supervised classification (`jaxnets.train.classification.ClassificationTask`) is the first task.
"""

from __future__ import annotations

from typing import Any, Protocol

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
