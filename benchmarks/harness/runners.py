"""One model's training step and eval forward in jaxnets and in its PyTorch twin, built the same way for
every benchmark: same inputs, SGD with momentum 0.9 at lr 0.1, softmax cross-entropy, BatchNorm statistics
updated on both sides, one `train(steps)` call = `steps` steps and one synchronisation.

The twins come from the model registry (`model_entry(name).reference.twin`, a key of tests/torch_twins'
`TWINS`): benchmarks keep no table of their own.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable

import jax
import numpy as np
import optax
import torch
import torch.nn.functional as F
from flax.traverse_util import flatten_dict, unflatten_dict
from torch_twins import TWINS  # tests/ is on sys.path: see harness/__init__.py

from jaxnets.models import layers, model_entry

LEARNING_RATE, MOMENTUM = 0.1, 0.9


def twin(name: str, num_classes: int, **overrides) -> tuple[Callable[[], torch.nn.Module], str] | None:
    """A builder of the PyTorch twin of the registered model `name` (with jaxnets' `overrides`, such as the ENAS
    child's arc and depth) and how it is built, for the results; None where its registry entry names none."""
    key = model_entry(name).reference.twin
    if key is None:
        return None
    arguments = "".join(f", {k}={v!r}" for k, v in overrides.items())
    return (lambda: TWINS[key](num_classes=num_classes, **overrides),
            f"torch_twins.TWINS[{key!r}](num_classes={num_classes}{arguments})")


def random_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal NCHW float32 images and uniform labels: a step's speed does not depend on them."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 3, size, size), dtype=np.float32), rng.integers(0, num_classes, batch)


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


class TorchRunner:
    """The same step in PyTorch: channels_last module and input, torch.optim.SGD, the default thread count.
    `torch_compile`: `torch.compile(dynamic=False)`, compiled by one step here (`compile_seconds`); `autocast`: the
    compute dtype under `torch.autocast` (parameters stay float32), cross-entropy in float32."""

    def __init__(self, module: torch.nn.Module, images_nchw: np.ndarray, labels: np.ndarray, *,
                 device: str = "cpu", torch_compile: bool = False, autocast: torch.dtype | None = None):
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        module = module.to(device=self.device, memory_format=torch.channels_last).train()
        self.model = torch.compile(module, dynamic=False) if torch_compile else module
        self.x = torch.from_numpy(images_nchw).to(self.device).contiguous(memory_format=torch.channels_last)
        self.y = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        self.optimizer = torch.optim.SGD(module.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        self.autocast = autocast
        self.compile_seconds = None
        if torch_compile:
            start = time.perf_counter()
            self.train()  # torch.compile traces and compiles forward and backward on the first call
            self.compile_seconds = time.perf_counter() - start

    def _autocast(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def train(self, steps: int = 1) -> None:
        for _ in range(steps):
            with self._autocast():
                logits = self.model(self.x)
            loss = F.cross_entropy(logits.float(), self.y)
            loss.backward()
            self.optimizer.step()
            # Gradients freed here rather than at the next step's start: between steps both frameworks then
            # hold the same state (parameters, BN statistics, momentum), which the memory probe relies on.
            self.optimizer.zero_grad(set_to_none=True)
        self._synchronize()

    def forward(self) -> None:
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            self.model(self.x)
        self.model.train()
        self._synchronize()

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def device_peak_gib(self) -> float | None:
        """The CUDA allocator's peak since this runner was built (None on the CPU)."""
        return torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None
