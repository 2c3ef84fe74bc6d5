"""Every registered model initialises, runs forward and takes one SGD step under jit, on CPU.

Depth and width are data (stage tables), so each model runs at one block per stage and a quarter of the
width (every group and stride kept): the same code path at a fraction of the compile time. Exact depths and
widths are covered by the parameter-count tests.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from parity import TRAINING_FAMILIES

from jaxnets.models import create_model, list_models
from jaxnets.train.trainer import call_once

IMAGE_SIZE = 32
BATCH = 4


def tiny_overrides(name: str) -> dict:
    model = create_model(name)
    if hasattr(model, "stage_sizes"):  # ResNet/ResNeXt: one block per stage, a quarter of the planes (groups kept)
        return {"stage_sizes": (1,) * len(model.stage_sizes), "stage_planes": tuple(p // 4 for p in model.stage_planes)}
    if hasattr(model, "width_multiplier"):  # MobileNetV2: every stage with one block, a quarter of the width
        stages = tuple((expand, channels, 1, stride) for expand, channels, _, stride in model.stages)
        return {"width_multiplier": 0.25, "stages": stages}
    raise AssertionError(f"{name}: add a tiny configuration for this family to tests/test_models.py")


def init(model, images):
    """model.init in eval mode, compiled as the trainer compiles its initialisation (at -O0 on a CPU)."""
    jitted = jax.jit(model.init, static_argnames="train")
    return call_once(jitted, jax.random.key(0), images, train=False, platform=jax.default_backend())


def batch(seed=0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.standard_normal((BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32))
    return images, jnp.asarray(rng.integers(0, 10, BATCH))


def loss_and_grads(model, variables, images, labels, dropout_key):
    def loss_fn(params):
        logits, updates = model.apply(
            {**variables, "params": params}, images, train=True, mutable=["batch_stats"],
            rngs={"dropout": dropout_key},
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return loss, grads, batch_stats


def sgd_step(model, variables, images, labels, dropout_key):
    loss, grads, batch_stats = loss_and_grads(model, variables, images, labels, dropout_key)
    params = jax.tree.map(lambda p, g: p - 0.1 * g, variables["params"], grads)
    return {"params": params, "batch_stats": batch_stats}, loss


def assert_trees_close(actual, expected, rtol):
    # Absolute slack scales with the whole tree: some BN means are mathematically zero (round-off only).
    scale = max(float(np.abs(e).max()) for e in jax.tree.leaves(expected))
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale)


# Numbers that change no code: ResNeXt's cardinality and width per group (test_layers runs every convolution of the
# zoo, grouped ones included, under every lowering).
SAME_CODE_FIELDS = ("groups", "width_per_group")


def distinct_tiny_models() -> list[str]:
    """The first registered name of each distinct tiny network (ENAS: test_enas_models). Variants that differ only
    in depth (ResNet-50 and -101, ResNeXt-50 and -152 32x4d, ...) are one network at one block per stage, and
    ResNeXts that differ only in SAME_CODE_FIELDS (29 8x64d and 16x64d; 101 32x8d and 64x4d) are one too."""
    first = {}
    for name in list_models():
        if not name.startswith("enas"):
            first.setdefault(tiny_code(name), name)
    return list(first.values())


def tiny_code(name: str) -> str:
    model = create_model(name, num_classes=10, **tiny_overrides(name))
    return repr(dataclasses.replace(model, **{field: None for field in SAME_CODE_FIELDS if hasattr(model, field)}))


def without_training_parity(names: list[str]) -> list[str]:
    """The networks whose code no train-mode parity test runs: test_parity_training.py checks one step of the
    others against PyTorch, every parameter's update and every BN statistic."""
    twinned = {tiny_code(name) for name in TRAINING_FAMILIES if not name.startswith("enas")}
    return [name for name in names if tiny_code(name) not in twinned]


@pytest.mark.parametrize("name", without_training_parity(distinct_tiny_models()))
def test_model_trains_one_step(name):
    model = create_model(name, num_classes=10, **tiny_overrides(name))
    images, labels = batch()
    variables = init(model, images)

    logits, eval_state = jax.jit(model.apply, static_argnames=("train", "mutable"))(
        variables, images, train=False, mutable=("batch_stats",))
    assert logits.shape == (BATCH, 10) and logits.dtype == jnp.float32
    assert np.isfinite(logits).all()
    jax.tree.map(np.testing.assert_array_equal, eval_state["batch_stats"], variables["batch_stats"])

    new_vars, loss = jax.jit(sgd_step, static_argnums=0)(model, variables, images, labels, jax.random.key(1))
    assert np.isfinite(loss)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(new_vars))
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), new_vars["batch_stats"], variables["batch_stats"])
    assert all(jax.tree.leaves(changed)), "train mode must update every BN statistic"
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), new_vars["params"], variables["params"])
    assert all(jax.tree.leaves(moved)), "one SGD step must move every parameter"


@pytest.mark.parametrize("name", ["cifar_mobilenet_v2"])  # (ResNeXt: the gradient test below runs it eagerly)
def test_jitted_forward_equals_eager_forward(name):
    # (Eager runs op by op, compiling each op once: a minute per model here, so one model per family.)
    model = create_model(name, num_classes=10, **tiny_overrides(name))
    images, _ = batch()
    variables = init(model, images)
    eval_forward = functools.partial(model.apply, train=False)
    # Eval mode to float32 round-off; train mode normalises over as few as 4 values (MobileNetV2 reaches 1x1 at
    # 32x32), which amplifies round-off to ~1e-3 (measured 7.6e-4).
    assert_trees_close(jax.jit(eval_forward)(variables, images), eval_forward(variables, images), rtol=1e-5)

    def train_forward(variables, images):
        return model.apply(variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})

    assert_trees_close(jax.jit(train_forward)(variables, images), train_forward(variables, images), rtol=2e-3)


@pytest.mark.parametrize("name", ["cifar_resnext50"])  # grouped 1x1, block-diagonal 3x3, pointwise, strided
def test_jitted_gradients_equal_eager_gradients(name):
    model = create_model(name, num_classes=10, **tiny_overrides(name))
    images, labels = batch()
    variables = init(model, images)
    jitted = jax.jit(loss_and_grads, static_argnums=0)(model, variables, images, labels, jax.random.key(1))
    eager = loss_and_grads(model, variables, images, labels, jax.random.key(1))
    np.testing.assert_allclose(jitted[0], eager[0], rtol=1e-5)
    # BN over a 4-image batch amplifies float32 round-off: against a float64 run, both conv lowerings'
    # float32 gradients are off by 4e-4 (global norm, measured), and jit fuses in a different order than
    # eager. A wrong gradient is off by O(1), so compare global norms at 2e-3.
    diff = optax.tree.norm(jax.tree.map(jnp.subtract, jitted[1], eager[1]))
    assert diff <= 2e-3 * optax.tree.norm(eager[1])


@pytest.mark.parametrize("name", ["resnext29_8x64d", "cifar_mobilenet_v2"])
def test_bf16_compute_keeps_float32_state(name):
    model = create_model(name, num_classes=10, dtype=jnp.bfloat16, **tiny_overrides(name))
    images, _ = batch()
    variables = init(model, images)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits, state = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                     rngs={"dropout": jax.random.key(1)}))(variables, images)
    assert logits.dtype == jnp.float32 and np.isfinite(logits).all()
    assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {jnp.dtype(jnp.float32)}
