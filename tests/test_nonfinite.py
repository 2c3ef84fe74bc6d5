"""The non-finite policy's host side: counting in a row, stopping, and the task's advice in the message."""

import logging
import types

import pytest

from jaxnets.errors import NonFiniteLossError
from jaxnets.train.nonfinite import NonFinitePolicy

TASK = types.SimpleNamespace(finite_metrics={"loss": "loss", "grad_norm": "gradient norm"},
                             divergence_advice="lower config.learning_rate",
                             epoch_finite_metrics={"grad_norm": "gradient norm"},
                             epoch_divergence_advice="lower config.search.controller_learning_rate")
NAN, FINE = float("nan"), 1.0


def test_the_first_non_finite_step_stops_a_run_that_allows_none():
    policy = NonFinitePolicy(TASK, skip_nonfinite_steps=0)
    policy.train_step(1, {"loss": FINE, "grad_norm": FINE})
    with pytest.raises(NonFiniteLossError, match=r"^gradient norm is inf at step 2: the run stops here \(lower "
                                                 r"config.learning_rate, or allow config.skip_nonfinite_steps\)$"):
        policy.train_step(2, {"loss": FINE, "grad_norm": float("inf")})


def test_non_finite_steps_are_counted_in_a_row_and_a_finite_one_resets_the_count(caplog):
    policy = NonFinitePolicy(TASK, skip_nonfinite_steps=2)
    with caplog.at_level(logging.WARNING, logger="jaxnets"):
        for step, loss in enumerate([NAN, NAN, FINE, NAN, NAN], start=1):
            policy.train_step(step, {"loss": loss, "grad_norm": FINE})
    assert "step 5: loss is nan; its update is discarded (2 of config.skip_nonfinite_steps=2 in a row)" in caplog.text
    with pytest.raises(NonFiniteLossError, match=r"^loss is nan at step 6:"):
        policy.train_step(6, {"loss": NAN, "grad_norm": FINE})


def test_a_non_finite_update_between_epochs_always_stops_with_the_tasks_advice():
    policy = NonFinitePolicy(TASK, skip_nonfinite_steps=5)
    updates = [{"grad_norm": FINE}, {"grad_norm": NAN}]
    with pytest.raises(NonFiniteLossError, match=r"^the gradient norm of update 2 between epochs is nan after step "
                                                 r"37: the run stops here \(lower "
                                                 r"config.search.controller_learning_rate\)$"):
        policy.epoch_updates(37, updates)
