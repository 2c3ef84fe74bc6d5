"""What the benchmark scripts share: a recipe by path, package versions, host variables, the SGD train step.

The scripts run as `python benchmarks/NAME.py`, so this directory is first on sys.path and `import common`
finds this file. No TensorFlow here: cpu.py and gpu.py run where it is not installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import pathlib

import jax
import numpy as np
import optax
from flax.traverse_util import flatten_dict, unflatten_dict


def load_recipe(path):
    """`get_config()` of a recipe file (configs/*.py)."""
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def host_variables(model, x) -> dict:
    """Numpy variables of the model's shapes: kernels He-normal (N(0, 2 / fan_in)), BN scales and variances 1,
    biases and means 0, from a fixed draw.

    Not `model.init`: compiling an init costs seconds (XLA:CPU: 3-6 s; it runs every initialiser and the
    forward pass), and a step's speed does not depend on the weights' values.
    """
    shapes = flatten_dict(jax.eval_shape(model.init, jax.random.key(0), x))
    rng = np.random.default_rng(0)
    values = {}
    for path, leaf in shapes.items():
        if path[-1] == "kernel":
            values[path] = rng.standard_normal(leaf.shape, dtype=np.float32) * np.float32(
                math.sqrt(2.0 / math.prod(leaf.shape[:-1])))
        elif path[-1] in ("scale", "var"):
            values[path] = np.ones(leaf.shape, np.float32)
        else:  # bias, mean
            values[path] = np.zeros(leaf.shape, np.float32)
    return unflatten_dict(values)


def sgd_train_step(model, tx: optax.GradientTransformation):
    """`step(state, images, labels, dropout_key, *extra) -> (state, loss)` for a state {"params", "batch_stats",
    "opt"}: train-mode forward (BN statistics updated), softmax cross-entropy, backward, `tx`'s update. `extra`
    are further positional arguments of `model.apply` (the ENAS search network's traced arc)."""

    def step(state, x, y, key, *extra):
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": state["batch_stats"]}, x, *extra,
                                          train=True, mutable=["batch_stats"], rngs={"dropout": key})
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates.get("batch_stats", {})

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "batch_stats": batch_stats,
                "opt": opt}, loss

    return step
