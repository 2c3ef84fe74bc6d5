"""Optimizers, weight decay, clipping and config validation against hand-written updates."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import optim_config

from jaxnets.optim import (
    check_optim_config,
    create_optimizer,
    create_schedule,
    regularization_loss,
    weight_decay_mask,
)

PARAMS = {
    "conv": {"kernel": np.array([[1.0, -2.0], [0.5, 3.0]], np.float32), "bias": np.array([0.5, -1.0], np.float32)},
    "bn": {"scale": np.array([1.0, 2.0], np.float32), "bias": np.array([0.0, 0.3], np.float32)},
}
# loss = sum(0.5 * CURVATURE * w^2 + 0.1 * w) over all leaves, so the gradient is CURVATURE * w + 0.1.
CURVATURE = jax.tree.map(lambda p: 0.5 * np.arange(1, p.size + 1, dtype=np.float32).reshape(p.shape), PARAMS)
STEPS = 3


def loss(params):
    terms = jax.tree.map(lambda w, c: jnp.sum(0.5 * c * w**2 + 0.1 * w), params, CURVATURE)
    return sum(jax.tree.leaves(terms))


def run_optax(config, steps: int = STEPS):
    tx = create_optimizer(config, steps_per_epoch=10)
    params = jax.tree.map(jnp.asarray, PARAMS)
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    return params


def reference(optimizer, lr=0.1, momentum=0.0, nesterov=False, decay=0.9, eps=1e-8, b1=0.9, b2=0.999, wd=0.0,
              mode=None, exclude=False):  # fmt: skip
    """The optimizer's update written out in float64, one leaf at a time (torch.optim's formulas)."""

    def leaf(w, c):
        w = w.astype(np.float64)
        leaf_wd = 0.0 if exclude and w.ndim <= 1 else wd
        buf, v, m = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
        for t in range(1, STEPS + 1):
            g = c * w + 0.1
            if mode == "coupled":
                g = g + leaf_wd * w
            if optimizer == "rmsprop":
                v = decay * v + (1 - decay) * g**2
                g = g / (np.sqrt(v) + eps)
            if optimizer in ("sgd", "rmsprop"):
                buf = momentum * buf + g
                d = g + momentum * buf if nesterov else buf
            else:  # adam
                m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
                d = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
            if mode == "decoupled":
                d = d + leaf_wd * w
            w = w - lr * d
        return w

    return jax.tree.map(leaf, PARAMS, CURVATURE)


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"optimizer": "sgd", "momentum": 0.0}, reference("sgd")),
        ({"optimizer": "sgd", "momentum": 0.9}, reference("sgd", momentum=0.9)),
        ({"optimizer": "sgd", "momentum": 0.9, "nesterov": True}, reference("sgd", momentum=0.9, nesterov=True)),
        ({"optimizer": "rmsprop", "momentum": 0.0, "rmsprop_decay": 0.9}, reference("rmsprop")),
        (
            {"optimizer": "rmsprop", "momentum": 0.9, "rmsprop_epsilon": 1e-3},
            reference("rmsprop", momentum=0.9, eps=1e-3),
        ),
        ({"optimizer": "adam", "adam_b1": 0.8, "adam_b2": 0.99}, reference("adam", b1=0.8, b2=0.99)),
        (
            {"optimizer": "adamw", "weight_decay": 0.1, "weight_decay_mode": "decoupled"},
            reference("adam", wd=0.1, mode="decoupled"),
        ),
        (
            {
                "optimizer": "adamw",
                "weight_decay": 0.1,
                "weight_decay_mode": "decoupled",
                "weight_decay_exclude_bn_and_bias": True,
            },
            reference("adam", wd=0.1, mode="decoupled", exclude=True),
        ),
        (
            {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.05, "weight_decay_mode": "decoupled"},
            reference("sgd", momentum=0.9, wd=0.05, mode="decoupled"),
        ),
        (
            {
                "optimizer": "sgd",
                "momentum": 0.9,
                "weight_decay": 0.05,
                "weight_decay_mode": "coupled",
                "weight_decay_exclude_bn_and_bias": True,
            },
            reference("sgd", momentum=0.9, wd=0.05, mode="coupled", exclude=True),
        ),
    ],
)
def test_steps_equal_the_written_out_update(fields, expected):
    actual = run_optax(optim_config(**fields))
    # atol: optax's Adam bias correction 1 - 0.999^t is float32 (1.3e-5 relative error at t=1).
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5), actual, expected)


def test_one_step_by_hand():
    # w = 1 (kernel[0, 0]), gradient 0.5 * 1 + 0.1 = 0.6, lr 0.1.
    def first_weight(**fields):
        return float(run_optax(optim_config(**fields), steps=1)["conv"]["kernel"][0, 0])

    assert first_weight(momentum=0.9) == pytest.approx(1 - 0.1 * 0.6)
    assert first_weight(momentum=0.9, nesterov=True) == pytest.approx(1 - 0.1 * (0.6 + 0.9 * 0.6))  # 0.886
    assert first_weight(optimizer="adam") == pytest.approx(0.9, abs=1e-6)  # first Adam step: lr * sign(g)
    # rmsprop: v = 0.1 * 0.36, step 0.1 * 0.6 / sqrt(0.036) = 0.316228
    assert first_weight(optimizer="rmsprop", momentum=0.0) == pytest.approx(1 - 0.316228, abs=1e-6)
    assert first_weight(optimizer="adamw", weight_decay_mode="decoupled", weight_decay=0.5) == pytest.approx(
        1 - 0.1 * (1 + 0.5 * 1), abs=1e-6
    )


def test_updates_follow_the_schedule():
    # One warm-up epoch of 4 steps: lr 0, 0.025, 0.05, 0.075, then 0.1.
    tx = create_optimizer(optim_config(momentum=0.0, warmup_epochs=1.0), steps_per_epoch=4)
    params = {"w": jnp.zeros(2)}
    state, seen = tx.init(params), []
    for _ in range(6):
        updates, state = tx.update({"w": jnp.ones(2)}, state, params)
        seen.append(float(updates["w"][0]))
    np.testing.assert_allclose(seen, [0.0, -0.025, -0.05, -0.075, -0.1, -0.1], rtol=1e-6)


def test_l2_loss_value_and_gradient_is_2_wd_w():
    config = optim_config(weight_decay=0.01, weight_decay_mode="l2_loss")
    # sum(w^2): kernel 1 + 4 + 0.25 + 9 = 14.25, conv bias 1.25, bn scale 5, bn bias 0.09.
    assert float(regularization_loss(PARAMS, config)) == pytest.approx(0.01 * 20.59, rel=1e-6)
    grads = jax.grad(regularization_loss)(PARAMS, config)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, 2 * 0.01 * w, rtol=1e-6), grads, PARAMS)

    excluding = optim_config(weight_decay=0.01, weight_decay_mode="l2_loss", weight_decay_exclude_bn_and_bias=True)
    assert float(regularization_loss(PARAMS, excluding)) == pytest.approx(0.01 * 14.25, rel=1e-6)
    grads = jax.grad(regularization_loss)(PARAMS, excluding)
    np.testing.assert_allclose(grads["conv"]["kernel"], 0.02 * PARAMS["conv"]["kernel"], rtol=1e-6)
    for g in (grads["conv"]["bias"], grads["bn"]["scale"], grads["bn"]["bias"]):
        np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_regularization_loss_is_zero_outside_l2_loss_mode(mode):
    assert float(regularization_loss(PARAMS, optim_config(weight_decay=0.01, weight_decay_mode=mode))) == 0.0


def test_mask_excludes_exactly_the_leaves_of_ndim_at_most_1():
    params = {
        "conv": {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.ones(8)},
        "depthwise": {"kernel": jnp.ones((3, 3, 1, 8))},
        "bn": {"scale": jnp.ones(8), "bias": jnp.ones(8)},
        "dense": {"kernel": jnp.ones((8, 10)), "bias": jnp.ones(10)},
        "scalar": jnp.ones(()),
    }
    mask = weight_decay_mask(params, exclude_bn_and_bias=True)
    assert mask == {
        "conv": {"kernel": True, "bias": False},
        "depthwise": {"kernel": True},
        "bn": {"scale": False, "bias": False},
        "dense": {"kernel": True, "bias": False},
        "scalar": False,
    }
    assert all(jax.tree.leaves(weight_decay_mask(params, exclude_bn_and_bias=False)))


GRADS = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.0, 12.0])}  # norms 5 and 12, global norm 13


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"grad_clip_norm": 6.5}, {"a": [1.5, 2.0], "b": [0.0, 6.0]}),  # scale 6.5 / 13
        ({"grad_clip_norm": 20.0}, {"a": [3.0, 4.0], "b": [0.0, 12.0]}),  # under the bound: untouched
        ({"grad_clip_per_tensor": 6.0}, {"a": [3.0, 4.0], "b": [0.0, 6.0]}),  # only b (norm 12) is clipped
        # per tensor to 2.5 ([1.5, 2], [0, 2.5]; global norm sqrt(12.5)), then global to 2.5: x 0.7071068
        ({"grad_clip_per_tensor": 2.5, "grad_clip_norm": 2.5}, {"a": [1.0606602, 1.4142136], "b": [0.0, 1.7677670]}),
    ],
)
def test_clipping(fields, expected):
    tx = create_optimizer(optim_config(learning_rate=1.0, momentum=0.0, **fields), steps_per_epoch=1)
    updates, _ = tx.update(GRADS, tx.init(GRADS), GRADS)
    jax.tree.map(lambda u, e: np.testing.assert_allclose(-u, e, rtol=1e-6), updates, expected)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"learning_rate": -0.1}, "config.learning_rate must be > 0, got -0.1"),
        ({"learning_rate": 0.0}, "config.learning_rate must be > 0, got 0.0"),
        ({"learning_rate": None}, "config.learning_rate is required, got None"),
        ({"learning_rate": "0.1"}, "config.learning_rate must be a number, got '0.1'"),
        ({"optimizer": "sgdd"}, "config.optimizer must be one of 'sgd', 'rmsprop', 'adam', 'adamw', got 'sgdd'"),
        (
            {"schedule": "cosin"},
            "config.schedule must be one of 'constant', 'staircase', 'multistep', 'cosine', 'sgdr', got 'cosin'",
        ),
        ({"momentum": 1.0}, "config.momentum must be in [0, 1), got 1.0"),
        ({"momentum": 0.0, "nesterov": True}, "config.nesterov needs config.momentum > 0, got True"),
        ({"nesterov": "yes"}, "config.nesterov must be a bool, got 'yes'"),
        ({"adam_b2": 1.5}, "config.adam_b2 must be in [0, 1), got 1.5"),
        ({"weight_decay": -1e-4}, "config.weight_decay must be >= 0, got -0.0001"),
        (
            {"weight_decay_mode": "l2"},
            "config.weight_decay_mode must be one of 'l2_loss', 'coupled', 'decoupled', got 'l2'",
        ),
        ({"optimizer": "adamw"}, "config.weight_decay_mode must be 'decoupled' with optimizer 'adamw', got 'l2_loss'"),
        ({"weight_decay_exclude_bn_and_bias": 1}, "config.weight_decay_exclude_bn_and_bias must be a bool, got 1"),
        ({"warmup_epochs": -1.0}, "config.warmup_epochs must be >= 0, got -1.0"),
        ({"warmup_epochs": 300.0}, "config.warmup_epochs must be shorter than config.num_epochs (200), got 300.0"),
        (
            {"schedule": "cosine", "num_epochs": None},
            "config.num_epochs is required by schedule 'cosine' (it sets the decay horizon), got None",
        ),
        (
            {"schedule": "cosine", "min_learning_rate": 0.2},
            "config.min_learning_rate must be in [0, config.learning_rate=0.1], got 0.2",
        ),
        ({"schedule": "staircase", "lr_decay_every_steps": 0}, "config.lr_decay_every_steps must be > 0, got 0"),
        (
            {"schedule": "staircase", "lr_decay_start_steps": 1.5},
            "config.lr_decay_start_steps must be an integer, got 1.5",
        ),
        (
            {"schedule": "multistep", "lr_decay_epochs": (60, 60, 160)},
            "config.lr_decay_epochs must be a non-empty, strictly increasing sequence of epochs > 0, got (60, 60, 160)",
        ),
        (
            {"schedule": "multistep", "lr_decay_epochs": ()},
            "config.lr_decay_epochs must be a non-empty, strictly increasing sequence of epochs > 0, got ()",
        ),
        (
            {"schedule": "multistep", "lr_decay_epochs": (60,), "lr_decay_factor": 0.0},
            "config.lr_decay_factor must be > 0, got 0.0",
        ),
        (
            {"schedule": "sgdr", "warmup_epochs": 1.0},
            "config.warmup_epochs must be 0 with schedule 'sgdr' (each cycle restarts at the peak), got 1.0",
        ),
        ({"schedule": "sgdr", "sgdr_t0_epochs": 0}, "config.sgdr_t0_epochs must be >= 1, got 0"),
        ({"schedule": "sgdr", "sgdr_t_mul": 1.5}, "config.sgdr_t_mul must be an integer, got 1.5"),
        ({"grad_clip_norm": 0.0}, "config.grad_clip_norm must be None or > 0, got 0.0"),
        ({"grad_clip_per_tensor": -5.0}, "config.grad_clip_per_tensor must be None or > 0, got -5.0"),
    ],
)
def test_validation_messages(fields, message):
    config = optim_config(**fields)
    for check in (check_optim_config, lambda c: create_schedule(c, 10), lambda c: create_optimizer(c, 10)):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            check(config)


def test_steps_per_epoch_must_be_a_positive_integer():
    with pytest.raises(ValueError, match=re.escape("steps_per_epoch must be a positive integer, got 0")):
        create_schedule(optim_config(), 0)


def torch_updated(optimizer_name: str, params: dict, grads: list[dict], **kwargs) -> dict:
    """`params` after one torch.optim step per entry of `grads` (float64)."""
    import torch

    tensors = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True) for k, v in params.items()}
    optimizer = getattr(torch.optim, optimizer_name)(list(tensors.values()), **kwargs)
    for grad in grads:
        for k, t in tensors.items():
            t.grad = torch.tensor(np.asarray(grad[k], np.float64))
        optimizer.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


@pytest.mark.parametrize("fields,torch_optimizer,torch_kwargs", [
    ({"optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "weight_decay_mode": "coupled"},
     "SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}),
    ({"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "weight_decay_mode": "coupled"},
     "SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
    ({"optimizer": "rmsprop", "momentum": 0.9, "rmsprop_decay": 0.9, "rmsprop_epsilon": 1e-3, "weight_decay": 1e-4,
      "weight_decay_mode": "coupled"},
     "RMSprop", {"lr": 0.1, "alpha": 0.9, "eps": 1e-3, "momentum": 0.9, "weight_decay": 1e-4}),
    ({"optimizer": "adam", "weight_decay": 1e-4, "weight_decay_mode": "coupled"},
     "Adam", {"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-4}),
    ({"optimizer": "adamw", "weight_decay": 0.05, "weight_decay_mode": "decoupled"},
     "AdamW", {"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05}),
], ids=["sgd", "sgd-nesterov", "rmsprop", "adam", "adamw"])
def test_five_steps_equal_torch_optims(fields, torch_optimizer, torch_kwargs):
    """PyTorch's semantics, as the docs claim, against torch.optim itself (float64): coupled decay is torch's
    `weight_decay`, decoupled with adamw is AdamW's; every parameter, BN scales and biases included."""
    rng = np.random.default_rng(0)
    params = {"kernel": rng.standard_normal((3, 3, 4, 8)).astype(np.float32),
              "bias": rng.standard_normal(8).astype(np.float32)}
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()} for _ in range(5)]
    tx = create_optimizer(optim_config(**fields), steps_per_epoch=10)
    state, ours = tx.init(params), params
    for grad in grads:
        updates, state = tx.update(grad, state, ours)
        ours = optax.apply_updates(ours, updates)
    expected = torch_updated(torch_optimizer, params, grads, **torch_kwargs)
    for k in params:  # the updates, to float32 round-off (Adam's bias correction is float32 in optax: 1e-5)
        np.testing.assert_allclose(np.asarray(ours[k], np.float64) - params[k], expected[k] - params[k],
                                   rtol=2e-5, atol=1e-6, err_msg=f"{torch_optimizer}: {k}")
