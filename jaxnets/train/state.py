"""The classification train state: everything a step reads and writes, and nothing else (so it checkpoints whole)."""

from __future__ import annotations

from typing import Any

import flax
import jax
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
