"""Uniformly random arcs of the macro space in JAX: the random-search baseline's sampler, jitted like the controller.

`jaxnets.models.enas.random_arc` draws the same distribution in NumPy (host side, concrete arcs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def uniform_arc(key: jax.Array, *, num_layers: int, num_branches: int, whole_channels: bool,
                num_filters: int) -> jax.Array:
    """int32 [arc_length]: each op uniform, each skip bit a fair coin; in channel mode each branch's start is
    uniform in [0, C) and its count uniform in [1, C - start] (the controller's ranges)."""
    keys = iter(jax.random.split(key, num_layers * (1 + 2 * num_branches)))
    out = []
    for k in range(num_layers):
        if whole_channels:
            out.append(jax.random.randint(next(keys), (1,), 0, num_branches))
        else:
            for _ in range(num_branches):
                start = jax.random.randint(next(keys), (1,), 0, num_filters)
                out += [start, jax.random.randint(next(keys), (1,), 1, num_filters - start + 1)]
        out.append(jax.random.bernoulli(next(keys), 0.5, (k,)).astype(jnp.int32))
    return jnp.concatenate(out).astype(jnp.int32)
