"""REINFORCE for the ENAS controller, as ../docs/enas.md and the reference describe it (official bugs fixed).

For each sampled arc, in order:
    reward    = accuracy of the arc on its held-out batch (BN in inference mode, no augmentation)
                + entropy_weight * entropy of the controller's decisions (a constant for the gradient)
    baseline <- baseline - (1 - decay) * (baseline - reward)      updated BEFORE the advantage, as the official
    advantage = reward - baseline                                  code reads it after its update
    loss      = -log p(arc) * advantage + skip_weight * KL(P(skip) || skip_target)
The gradients of `arcs_per_update` arcs are averaged, optionally clipped to a global norm, and Adam
(beta1 = 0, eps = 1e-3 in the released search) takes one step.
"""

from __future__ import annotations

import jax
import optax

from jaxnets.nas.controller import MacroController


def controller_optimizer(search) -> optax.GradientTransformation:
    """The controller's optimizer from a run's `config.search` section."""
    chain = []
    if search.controller_grad_clip_norm is not None:  # optax's clip really clips (the official one was a no-op)
        chain.append(optax.clip_by_global_norm(search.controller_grad_clip_norm))
    chain.append(optax.adam(search.controller_learning_rate, b1=search.controller_adam_b1,
                            b2=search.controller_adam_b2, eps=search.controller_adam_eps))
    return optax.chain(*chain)


def updated_baseline(baseline: jax.Array, reward: jax.Array, decay: float) -> jax.Array:
    return baseline - (1.0 - decay) * (baseline - reward)


def controller_loss(controller: MacroController, params, arc: jax.Array, advantage: jax.Array,
                    skip_weight: float) -> jax.Array:
    """The REINFORCE loss of one sampled arc; `arc` is re-scored (teacher forcing), so its gradient is exact."""
    scored = controller.apply({"params": params}, arc, method=MacroController.log_prob)
    return -scored["log_prob"] * jax.lax.stop_gradient(advantage) + skip_weight * scored["skip_penalty"]
