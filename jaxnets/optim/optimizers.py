"""Optimizers from the flat config, and the L2 term for `weight_decay_mode="l2_loss"`.

The transformation is one chain, in this order:
  per-tensor clip -> global-norm clip -> [coupled decay] -> preconditioner -> momentum -> [decoupled decay] -> -lr(step)
so sgd, rmsprop, adam and adamw perform torch.optim's updates of those names (with decoupled decay, sgd is
SGDW; with coupled decay, any optimizer gets torch's `weight_decay`). Clipping sees
the gradient it is given: in a data-parallel step, give it the all-reduced gradient; with l2_loss, that
gradient includes the L2 term (as in ENAS).
"""

import jax
import jax.numpy as jnp
import optax

from jaxnets.optim.schedules import create_schedule


def _decayed(param, exclude_bn_and_bias: bool) -> bool:
    # BN scales/offsets and biases are exactly the leaves with ndim <= 1 (kernels and embeddings have >= 2).
    return not exclude_bn_and_bias or jnp.ndim(param) > 1


def weight_decay_mask(params, exclude_bn_and_bias: bool):
    """A pytree of bools like `params`: True where weight decay applies."""
    return jax.tree.map(lambda p: _decayed(p, exclude_bn_and_bias), params)


def regularization_loss(params, config) -> jax.Array:
    """`weight_decay * sum(w^2)` (gradient 2 * weight_decay * w) for mode l2_loss, else 0; float32 scalar.

    ENAS semantics: over ALL params (BN scales/offsets and biases too) unless weight_decay_exclude_bn_and_bias.
    """
    weight_decay = config["weight_decay"]
    if config["weight_decay_mode"] != "l2_loss" or weight_decay == 0:
        return jnp.zeros((), jnp.float32)
    exclude = config["weight_decay_exclude_bn_and_bias"]
    squares = [jnp.sum(jnp.square(p.astype(jnp.float32))) for p in jax.tree.leaves(params) if _decayed(p, exclude)]
    return weight_decay * sum(squares, jnp.zeros((), jnp.float32))


def clip_by_norm_per_tensor(max_norm: float) -> optax.GradientTransformation:
    """Scales each tensor whose L2 norm exceeds `max_norm` down to that norm (TF's `clip_by_norm`).

    ENAS's clip_mode="norm" meant this, but the official code appended the unclipped gradient (a no-op);
    this one really clips.
    """

    def clip(g):
        norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
        return g * (max_norm / jnp.maximum(norm, max_norm)).astype(g.dtype)

    return optax.stateless(lambda updates, params: jax.tree.map(clip, updates))


def _momentum(config) -> list[optax.GradientTransformation]:
    momentum = config["momentum"]
    return [optax.trace(decay=momentum, nesterov=config["nesterov"])] if momentum > 0 else []


def _sgd(config) -> list[optax.GradientTransformation]:
    # buf = momentum * buf + g; direction = buf, or g + momentum * buf with Nesterov (torch SGD, dampening 0).
    return _momentum(config)


def _rmsprop(config) -> list[optax.GradientTransformation]:
    # torch RMSprop: v = decay * v + (1 - decay) * g^2 from v = 0; u = g / (sqrt(v) + eps); momentum on u; then lr.
    # (TF's RMSProp differs: eps inside the sqrt, v starting at 1, and the lr applied inside the momentum.)
    rms = optax.scale_by_rms(
        decay=config["rmsprop_decay"], eps=config["rmsprop_epsilon"], initial_scale=0.0, eps_in_sqrt=False
    )
    return [rms, *_momentum(config)]


def _adam(config) -> list[optax.GradientTransformation]:
    # Bias-corrected Adam with eps outside the sqrt; adamw differs only by its (required) decoupled decay.
    return [optax.scale_by_adam(b1=config["adam_b1"], b2=config["adam_b2"], eps=config["adam_eps"])]


_PRECONDITIONERS = {"sgd": _sgd, "rmsprop": _rmsprop, "adam": _adam, "adamw": _adam}


def create_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """Clipping, weight decay (coupled or decoupled modes), the optimizer and the config's lr schedule."""
    schedule = create_schedule(config, steps_per_epoch)  # validates the config
    weight_decay, mode = config["weight_decay"], config["weight_decay_mode"]
    exclude = config["weight_decay_exclude_bn_and_bias"]
    decay = [optax.add_decayed_weights(weight_decay, mask=lambda p: weight_decay_mask(p, exclude))]

    chain = []
    if config["grad_clip_per_tensor"] is not None:
        chain.append(clip_by_norm_per_tensor(config["grad_clip_per_tensor"]))
    if config["grad_clip_norm"] is not None:
        chain.append(optax.clip_by_global_norm(config["grad_clip_norm"]))
    chain += decay if mode == "coupled" and weight_decay > 0 else []
    chain += _PRECONDITIONERS[config["optimizer"]](config)
    chain += decay if mode == "decoupled" and weight_decay > 0 else []
    chain.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*chain)
