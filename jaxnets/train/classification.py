"""Supervised image classification, the first task of the loop: images -> labels, cross-entropy.

The steps run per device under `jax.shard_map` (`jaxnets.train.parallel`): the batch is this device's
shard; the loss, metrics and (per-device) BN statistics are averaged over the data axis, so the state
leaving a step is identical on every device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from jaxnets.models import layers
from jaxnets.optim import regularization_loss
from jaxnets.train.parallel import DATA_AXIS
from jaxnets.train.state import TrainState


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) if label_smoothing else (
        jax.nn.one_hot(labels, num_classes))
    return optax.softmax_cross_entropy(logits, targets)


def supervised_step(state, batch, *, apply_fn, tx, schedule, config, dropout_key):
    """One optimizer update of `state` (params, batch_stats, opt_state, ema_params, step) on this device's shard of
    {"image", "label"}: cross-entropy of `apply_fn(variables, images, train=True, ...)` plus the config's L2.
    Per device under shard_map; returns the new state, identical on every device, and the averaged metrics.
    Shared by the tasks that train a network on labels (classification; the ENAS search's shared network)."""

    def loss_fn(params):
        with layers.synchronized_batch_norm(DATA_AXIS if config.sync_batch_norm else None):
            logits, updates = apply_fn(
                {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
                mutable=["batch_stats"], rngs={"dropout": dropout_key},
            )
        # The global-batch mean. Differentiating it gives the global gradient directly: shard_map's
        # autodiff sums the cotangents of the replicated params over devices (a pmean of the gradients
        # on top would be a no-op; differentiating the local mean instead would give n x the gradient).
        data_loss = jax.lax.pmean(cross_entropy(logits, batch["label"], config.label_smoothing).mean(), DATA_AXIS)
        return data_loss + regularization_loss(params, config), (data_loss, logits, updates["batch_stats"])

    (total_loss, (data_loss, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if not config.sync_batch_norm:  # per-device statistics; keep the stored running averages replicated
        batch_stats = jax.lax.pmean(batch_stats, DATA_AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params is not None:
        decay = config.ema_decay
        ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)

    metrics = {
        "loss": data_loss,
        "total_loss": total_loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),  # of the updated parameters: a finite gradient can still overflow
        "learning_rate": schedule(state.step),
    }
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state, ema_params=ema_params
    )
    return new_state, jax.lax.pmean(metrics, DATA_AXIS)


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    """Trains `model` on {"image", "label"} batches; evaluates top-1, top-5 and loss on masked eval batches."""

    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    config: Any  # the resolved run config (label smoothing, weight decay, EMA, BN synchronisation)
    image_shape: tuple[int, int, int]  # (H, W, C) of one example

    # The train metrics whose non-finite value makes the loop discard or stop (its NaN policy), with their
    # names in words; and the eval metric `config.keep_best` keeps the highest of.
    finite_metrics = {"loss": "loss", "grad_norm": "gradient norm", "param_norm": "parameter norm"}
    best_metric = "eval_top1"

    def init_state(self) -> TrainState:
        """Parameters initialised on one zero image of `image_shape`. Pure: jit it."""
        init_key, state_key = jax.random.split(jax.random.key(self.config.seed))
        variables = self.model.init(init_key, jnp.zeros((1, *self.image_shape), jnp.float32), train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=self.tx.init(params),
            rng=jax.random.key_data(state_key),
            ema_params=params if self.config.ema_decay is not None else None,
        )

    def train_step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
        """One optimizer update on this device's shard of the global batch."""
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        dropout_key = jax.random.fold_in(step_key, jax.lax.axis_index(DATA_AXIS))
        return supervised_step(state, batch, apply_fn=self.model.apply, tx=self.tx, schedule=self.schedule,
                               config=self.config, dropout_key=dropout_key)

    def eval_step(self, state: TrainState, batch) -> dict:
        """Sums over this device's shard, psum'd: padded examples (mask False) count nowhere."""
        logits = self.model.apply(state.eval_variables(), batch["image"], train=False)
        mask = batch["mask"].astype(jnp.float32)
        labels = batch["label"]
        top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        sums = {
            "loss": jnp.sum(cross_entropy(logits, labels) * mask),
            "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
            "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
            "count": jnp.sum(mask),
        }
        return jax.lax.psum(sums, DATA_AXIS)

    @staticmethod
    def eval_metrics(sums: dict) -> dict:
        """The summed eval counts of a whole pass -> the reported `eval_*` metrics."""
        count = float(sums["count"])
        return {"eval_loss": float(sums["loss"]) / count, "eval_top1": float(sums["top1"]) / count,
                "eval_top5": float(sums["top5"]) / count, "eval_examples": count}
