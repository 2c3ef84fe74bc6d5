"""Per-device train and eval steps. `parallel.py` runs them on every device with `jax.shard_map`.

Inside, the batch is this device's shard; the loss, metrics and (per-device) BN statistics are averaged
over the data axis, so the state leaving a step is identical on every device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxnets.models import layers
from jaxnets.optim import regularization_loss
from jaxnets.train.state import TrainState

DATA_AXIS = "data"


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) if label_smoothing else (
        jax.nn.one_hot(labels, num_classes))
    return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch, *, model, tx, schedule, config):
    """One optimizer update on this device's shard of the global batch -> (state, metrics)."""
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    dropout_key = jax.random.fold_in(step_key, jax.lax.axis_index(DATA_AXIS))

    def loss_fn(params):
        with layers.synchronized_batch_norm(DATA_AXIS if config.sync_batch_norm else None):
            logits, updates = model.apply(
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
    metrics = jax.lax.pmean(metrics, DATA_AXIS)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state, ema_params=ema_params
    )
    if config.skip_nonfinite_steps:  # a non-finite update is discarded; only the step count moves on
        finite = jnp.all(jnp.isfinite(jnp.stack([metrics[k] for k in ("loss", "grad_norm", "param_norm")])))
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        new_state = kept.replace(step=new_state.step)
        metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
    return new_state, metrics


def eval_step(state: TrainState, batch, *, model):
    """Sums over this device's shard, psum'd: padded examples (mask False) count nowhere."""
    logits = model.apply(state.eval_variables(), batch["image"], train=False)
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
