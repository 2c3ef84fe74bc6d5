"""One model's training step and eval forward in jaxnets, built the same way for every benchmark: same inputs,
SGD with momentum 0.9 at lr 0.1, softmax cross-entropy, BatchNorm statistics updated, one `train(steps)` call =
`steps` steps and one synchronisation. Its PyTorch twin's, built alike: harness/torch_runners.py. Neither module
imports the other's framework, so a process measuring one framework's memory loads only that one.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import numpy as np
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

from harness.batches import LEARNING_RATE, MOMENTUM
from jaxnets.models import layers


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


class JaxRunner:
    """A Flax model's jitted train step (state donated) and eval forward, compiled up front, on the default
    device, as the trainer traces them: convolutions lowered for that device's platform (`conv_lowering`).
    `variables` default to `host_variables`; `extra` are further positional arguments of `model.apply` after
    the images (the ENAS search network's traced arc)."""

    def __init__(self, model, images_nchw: np.ndarray, labels: np.ndarray, *, extra=(), forward: bool = True,
                 variables: dict | None = None):
        self.x = jax.device_put(images_nchw.transpose(0, 2, 3, 1))  # NHWC
        self.y = jax.device_put(labels.astype(np.int32))
        self.extra = tuple(extra)
        self.key = jax.random.key(1)  # dropout
        variables = jax.device_put(host_variables(model, self.x) if variables is None else variables)
        tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
        # The optimizer state made by one compiled program, as the trainer makes its state: run eagerly, optax's
        # init compiles a small program per parameter shape, and their code stayed resident (ResNeXt-50: 48 MiB
        # of this process's RSS between steps, counted in its peak).
        self.state = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {}),
                      "opt": jax.jit(tx.init)(variables["params"])}

        with layers.conv_lowering("auto", jax.devices()[0].platform):
            start = time.perf_counter()
            self.train_step = jax.jit(sgd_train_step(model, tx), donate_argnums=0).lower(
                self.state, self.x, self.y, self.key, *self.extra).compile()
            self.compile_seconds = time.perf_counter() - start
            self.forward_compile_seconds = None
            if forward:
                start = time.perf_counter()
                self.forward_step = jax.jit(functools.partial(model.apply, train=False)).lower(
                    self._variables(), self.x, *self.extra).compile()
                self.forward_compile_seconds = time.perf_counter() - start

    def _variables(self):
        return {"params": self.state["params"], "batch_stats": self.state["batch_stats"]}

    def train(self, steps: int = 1) -> None:
        loss = None
        for _ in range(steps):
            self.state, loss = self.train_step(self.state, self.x, self.y, self.key, *self.extra)
        jax.block_until_ready((self.state, loss))

    def forward(self) -> None:
        jax.block_until_ready(self.forward_step(self._variables(), self.x, *self.extra))

    @staticmethod
    def device_peak_gib() -> float | None:
        """The device allocator's peak since the process started (None on the CPU, which keeps no count)."""
        peak = (jax.local_devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
        return None if peak is None else peak / 2**30
