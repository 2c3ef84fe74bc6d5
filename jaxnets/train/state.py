"""The train state: everything a step reads and writes, and nothing else (so it checkpoints whole)."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: the number of optimizer updates taken
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32 key data (checkpointable); per-step keys are folded from it
    ema_params: Any = None  # parameter EMA used for eval, when config.ema_decay is set

    def eval_variables(self) -> dict:
        params = self.params if self.ema_params is None else self.ema_params
        return {"params": params, "batch_stats": self.batch_stats}


def create_train_state(model, tx: optax.GradientTransformation, image_shape, seed: int, ema: bool) -> TrainState:
    """Initialises parameters with a batch of one image of `image_shape` (H, W, C). Pure: jit it."""
    init_key, state_key = jax.random.split(jax.random.key(seed))
    variables = model.init(init_key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=jax.random.key_data(state_key),
        ema_params=params if ema else None,
    )
