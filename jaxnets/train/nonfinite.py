"""The non-finite policy, all of it: what happens when a step's loss, gradient or update is NaN or Inf.

config.skip_nonfinite_steps = 0: the first such step stops the run (NonFiniteLossError, before its state is
saved). N > 0: such a step's update is discarded on the devices (`discard_non_finite`: the data moves on) and
only the (N+1)-th of them in a row stops the run. An update between epochs (`task.BetweenEpochs`) that is not
finite always stops the run. Which metrics count, and what to advise, is the task's (`finite_metrics`,
`divergence_advice`).
"""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp

from jaxnets.errors import NonFiniteLossError

log = logging.getLogger("jaxnets")


def discard_non_finite(step_fn, metric_names):
    """`step_fn` that keeps the old state (but advances `step`, so the data moves on) when any of the named
    metrics is NaN or Inf, and reports `skipped` (1.0 or 0.0). The metrics are reduced over devices, so
    every device takes the same decision."""

    def step(state, batch):
        new_state, metrics = step_fn(state, batch)
        finite = jnp.all(jnp.isfinite(jnp.stack([metrics[k] for k in metric_names])))
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        return kept.replace(step=new_state.step), {**metrics, "skipped": 1.0 - finite.astype(jnp.float32)}

    return step


class NonFinitePolicy:
    """Host side: reads each step's metrics in order, counts non-finite steps in a row, stops or warns."""

    def __init__(self, task, skip_nonfinite_steps: int):
        self.task = task
        self.allowed_in_a_row = skip_nonfinite_steps
        self.in_a_row = 0

    def train_step(self, step: int, metrics: dict) -> None:
        non_finite = _first_non_finite(metrics, self.task.finite_metrics)
        if non_finite is None:
            self.in_a_row = 0
            return
        name, value = non_finite
        self.in_a_row += 1
        if self.in_a_row > self.allowed_in_a_row:
            raise NonFiniteLossError(f"{name} is {value} at step {step}: the run stops here "
                                     f"({self.task.divergence_advice}, or allow config.skip_nonfinite_steps)")
        log.warning("step %d: %s is %s; its update is discarded (%d of config.skip_nonfinite_steps=%d in a row)",
                    step, name, value, self.in_a_row, self.allowed_in_a_row)

    def epoch_updates(self, step: int, updates: list[dict]) -> None:
        """The updates between epochs after `step`: any non-finite one stops the run (its state is not saved)."""
        for i, metrics in enumerate(updates):
            non_finite = _first_non_finite(metrics, self.task.epoch_finite_metrics)
            if non_finite is not None:
                name, value = non_finite
                raise NonFiniteLossError(f"the {name} of update {i + 1} between epochs is {value} after step {step}: "
                                         f"the run stops here ({self.task.epoch_divergence_advice})")


def _first_non_finite(metrics: dict, names: dict[str, str]) -> tuple[str, float] | None:
    """The first of the checked metrics that is NaN or Inf, as (its name in words, its value)."""
    for key, spoken in names.items():
        value = float(metrics[key])
        if not math.isfinite(value):
            return spoken, value
    return None
