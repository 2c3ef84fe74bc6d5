"""The train step's options: parameter EMA, label smoothing, bf16 compute, skipping non-finite steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from helpers import SYNTHETIC_DATASET, random_batches, tiny_resnext_config

from jaxnets.tasks.supervised import cross_entropy
from jaxnets.train import build_trainer


def one_step(config, poisoned: bool = False):
    """(state before, state after, metrics) of one step on one device."""
    trainer = build_trainer(config, devices=jax.devices()[:1], dataset_info=SYNTHETIC_DATASET)
    state = trainer.init_state()
    before = jax.device_get(state)
    batch = next(random_batches(1))
    if poisoned:
        batch["image"][0, 0, 0, 0] = np.nan
    after, metrics = trainer.train_step(state, trainer.shard(batch))
    return before, jax.device_get(after), metrics


def test_ema_params_move_by_one_minus_decay():
    config = tiny_resnext_config()
    config.ema_decay = 0.75
    before, after, _ = one_step(config)
    expected = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * p, before.params, after.params)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7), after.ema_params, expected)
    assert after.eval_variables()["params"] is after.ema_params


def test_label_smoothing_raises_the_loss_of_confident_predictions():
    logits = jnp.array([[10.0, 0.0, 0.0]])
    labels = jnp.array([0])
    assert cross_entropy(logits, labels, 0.1)[0] > cross_entropy(logits, labels)[0]


def test_the_train_step_smooths_labels_as_asked():
    """The cross-entropy against smoothed targets is linear in the smoothing, (1 - e) * CE + e * (mean of -log p):
    from the same state and batch (the same logits), the step's loss at 0, 0.1 and 0.2 lies on one line, and not a
    flat one (a step that ignored the field would give three equal losses)."""
    losses = []
    for smoothing in (0.0, 0.1, 0.2):
        config = tiny_resnext_config()
        config.label_smoothing = smoothing
        losses.append(float(one_step(config)[2]["loss"]))
    assert abs(losses[1] - losses[0]) > 1e-3, losses
    # (to the float32 round-off of losses near 2.3: a few 1e-7)
    np.testing.assert_allclose(losses[2] - losses[1], losses[1] - losses[0], rtol=0, atol=2e-6)


def test_bfloat16_compute_trains_with_float32_state():
    config = tiny_resnext_config()
    config.dtype = "bfloat16"
    _, after, metrics = one_step(config)
    assert np.isfinite(float(metrics["loss"]))
    assert {leaf.dtype for leaf in jax.tree.leaves((after.params, after.batch_stats))} == {np.dtype(np.float32)}


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_parameter_norm_is_that_of_the_updated_parameters():
    _, after, metrics = one_step(tiny_resnext_config())
    expected = np.sqrt(sum(np.sum(np.square(p, dtype=np.float64)) for p in jax.tree.leaves(after.params)))
    np.testing.assert_allclose(float(metrics["param_norm"]), expected, rtol=1e-5)
    assert "skipped" not in metrics  # the check costs nothing unless it is asked for


# A NaN pixel always makes the gradient NaN (the first conv's weight gradient multiplies the input). The
# loss need not be NaN: for this batch eager mode gives NaN logits, but the jitted XLA:CPU forward pass a
# finite loss (XLA's fusions are known not to propagate every NaN). So these checks read the gradient norm.
def test_a_non_finite_step_is_discarded_when_skipping_is_on():
    config = tiny_resnext_config()
    config.skip_nonfinite_steps = 1
    config.ema_decay = 0.5
    before, after, metrics = one_step(config, poisoned=True)
    assert np.isnan(float(metrics["grad_norm"])) and float(metrics["skipped"]) == 1.0
    assert int(after.step) == int(before.step) + 1  # the data position moves on
    assert_trees_equal((after.params, after.batch_stats, after.opt_state, after.ema_params),
                       (before.params, before.batch_stats, before.opt_state, before.ema_params))

    before, after, metrics = one_step(config)
    assert float(metrics["skipped"]) == 0.0
    with np.testing.assert_raises(AssertionError):
        assert_trees_equal(after.params, before.params)


def test_without_skipping_a_non_finite_step_is_applied_as_is():
    before, after, metrics = one_step(tiny_resnext_config(), poisoned=True)
    assert np.isnan(float(metrics["grad_norm"]))
    assert not all(np.isfinite(p).all() for p in jax.tree.leaves(after.params))  # the loop stops the run
