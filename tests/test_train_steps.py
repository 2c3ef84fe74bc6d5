"""The train step's options: parameter EMA, label smoothing, bf16 compute."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from test_train_parallel import batches, tiny_resnext_config

from jaxnets.optim import create_optimizer, create_schedule
from jaxnets.train import parallel, steps
from jaxnets.train.loop import build_model
from jaxnets.train.state import create_train_state


def one_step(config, ema: bool):
    mesh = parallel.create_mesh(jax.devices()[:1])
    model = build_model(config, num_classes=10)
    schedule, tx = create_schedule(config, 100), create_optimizer(config, 100)
    state = jax.jit(functools.partial(create_train_state, model, tx, (8, 8, 3), 0, ema))()
    step = parallel.data_parallel_train_step(
        functools.partial(steps.train_step, model=model, tx=tx, schedule=schedule, config=config), mesh)
    before = jax.device_get(state)
    after, metrics = step(state, parallel.device_batch(next(batches(1)), mesh))
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
