"""The train step's options: parameter EMA, label smoothing, bf16 compute, skipping non-finite steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from test_train_parallel import batches, tiny_resnext_config

from jaxnets.models import create_model_from_config
from jaxnets.optim import create_optimizer, create_schedule
from jaxnets.train import parallel, steps
from jaxnets.train.state import create_train_state


def one_step(config, ema: bool, poisoned: bool = False):
    mesh = parallel.create_mesh(jax.devices()[:1])
    model = create_model_from_config(config, num_classes=10)
    schedule, tx = create_schedule(config, 100), create_optimizer(config, 100)
    state = jax.jit(functools.partial(create_train_state, model, tx, (8, 8, 3), 0, ema))()
    step = parallel.data_parallel_train_step(
        functools.partial(steps.train_step, model=model, tx=tx, schedule=schedule, config=config), mesh)
    before = jax.device_get(state)
    batch = next(batches(1))
    if poisoned:
        batch["image"][0, 0, 0, 0] = np.nan
    after, metrics = step(state, parallel.device_batch(batch, mesh))
    return before, jax.device_get(after), metrics


def test_ema_params_move_by_one_minus_decay():
    config = tiny_resnext_config()
    config.ema_decay = 0.75
    before, after, _ = one_step(config, ema=True)
    expected = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * p, before.params, after.params)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7), after.ema_params, expected)
    assert after.eval_variables()["params"] is after.ema_params


def test_label_smoothing_raises_the_loss_of_confident_predictions():
    plain, smoothed = tiny_resnext_config(), tiny_resnext_config()
    smoothed.label_smoothing = 0.1
    logits = jnp.array([[10.0, 0.0, 0.0]])
    labels = jnp.array([0])
    assert steps.cross_entropy(logits, labels, 0.1)[0] > steps.cross_entropy(logits, labels)[0]
    loss_plain = float(one_step(plain, ema=False)[2]["loss"])
    loss_smoothed = float(one_step(smoothed, ema=False)[2]["loss"])
    assert loss_plain != loss_smoothed


def test_bfloat16_compute_trains_with_float32_state():
    config = tiny_resnext_config()
    config.dtype = "bfloat16"
    _, after, metrics = one_step(config, ema=False)
    assert np.isfinite(float(metrics["loss"]))
    assert {leaf.dtype for leaf in jax.tree.leaves((after.params, after.batch_stats))} == {np.dtype(np.float32)}


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_parameter_norm_is_that_of_the_updated_parameters():
    _, after, metrics = one_step(tiny_resnext_config(), ema=False)
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
    before, after, metrics = one_step(config, ema=True, poisoned=True)
    assert np.isnan(float(metrics["grad_norm"])) and float(metrics["skipped"]) == 1.0
    assert int(after.step) == int(before.step) + 1  # the data position moves on
    assert_trees_equal((after.params, after.batch_stats, after.opt_state, after.ema_params),
                       (before.params, before.batch_stats, before.opt_state, before.ema_params))

    before, after, metrics = one_step(config, ema=True)
    assert float(metrics["skipped"]) == 0.0
    with np.testing.assert_raises(AssertionError):
        assert_trees_equal(after.params, before.params)


def test_without_skipping_a_non_finite_step_is_applied_as_is():
    before, after, metrics = one_step(tiny_resnext_config(), ema=False, poisoned=True)
    assert np.isnan(float(metrics["grad_norm"]))
    assert not all(np.isfinite(p).all() for p in jax.tree.leaves(after.params))  # the loop stops the run
