"""The supervised update that the tasks training a network on labels share (classification; the ENAS search's
shared network), and its state.

The step runs per device under `jax.shard_map` (`jaxnets.train.parallel`): the batch is this device's
shard; the loss, metrics and (per-device) BN statistics are averaged over the data axis, so the state
leaving a step is identical on every device.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from jaxnets.models import layers
from jaxnets.models.normalization import frozen_statistics
from jaxnets.optim import regularization_loss
from jaxnets.tasks.finetune import is_frozen
from jaxnets.train.parallel import DATA_AXIS

# The train metrics whose non-finite value makes the loop discard or stop (jaxnets.train.nonfinite), with their
# names in words, and what to change then.
FINITE_METRICS = {"loss": "loss", "grad_norm": "gradient norm", "param_norm": "parameter norm"}
DIVERGENCE_ADVICE = "lower config.learning_rate or set config.grad_clip_norm"


@flax.struct.dataclass
class TrainState:
    """Everything a supervised step reads and writes, and nothing else (so it checkpoints whole)."""

    step: jax.Array  # int32 scalar: the number of optimizer updates taken
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32 key data (checkpointable); per-step keys are folded from it
    ema_params: Any = None  # parameter EMA used for eval, when config.ema_decay is set

    def eval_variables(self) -> dict:
        params = self.params if self.ema_params is None else self.ema_params
        return {"params": params, "batch_stats": self.batch_stats}

    def with_model_variables(self, params, batch_stats) -> TrainState:
        return self.replace(params=params, batch_stats=batch_stats,
                            ema_params=None if self.ema_params is None else params)


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) if label_smoothing else (
        jax.nn.one_hot(labels, num_classes))
    return optax.softmax_cross_entropy(logits, targets)


def supervised_step(state, batch, *, apply_fn, tx, schedule, config, dropout_key, frozen=None, frozen_batch_norm=None):
    """One optimizer update of `state` (params, batch_stats, opt_state, step and, if it has one, ema_params) on this
    device's shard of {"image", "label"}: cross-entropy of `apply_fn(variables, images, train=True, ...)` plus the
    config's L2. Per device under shard_map; returns the new state, identical on every device, and the averaged
    metrics. `frozen` and `frozen_batch_norm` (regular expressions of module paths, `jaxnets.tasks.finetune`):
    modules that get no gradient and keep their EMA (`tx` gives them no update), and BN layers that normalise with
    their running statistics and keep them."""

    def loss_fn(params):
        # No gradient flows into frozen parameters, so XLA prunes the backward pass below the last trained layer.
        params = jax.tree_util.tree_map_with_path(
            lambda path, p: jax.lax.stop_gradient(p) if is_frozen(frozen, path) else p, params)
        with layers.synchronized_batch_norm(DATA_AXIS if config.sync_batch_norm else None), \
                frozen_statistics(frozen_batch_norm):
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
    if frozen_batch_norm is not None:  # the stored bits (a mean over devices of equal values may round)
        batch_stats = jax.tree_util.tree_map_with_path(
            lambda path, new, old: old if is_frozen(frozen_batch_norm, path) else new, batch_stats, state.batch_stats)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    if getattr(state, "ema_params", None) is not None:
        decay = config.ema_decay
        new_state = new_state.replace(ema_params=jax.tree_util.tree_map_with_path(
            lambda path, e, p: e if is_frozen(frozen, path) else decay * e + (1.0 - decay) * p,
            state.ema_params, params))

    metrics = {
        "loss": data_loss,
        "total_loss": total_loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),  # of the updated parameters: a finite gradient can still overflow
        "learning_rate": schedule(state.step),
    }
    return new_state, jax.lax.pmean(metrics, DATA_AXIS)
