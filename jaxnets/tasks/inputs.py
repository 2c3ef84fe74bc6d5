"""What a batch's "image" becomes before the network: the images themselves, or for a sound dataset the log-mel
spectrograms of its clips, made on the accelerator inside the step (jaxnets.sound.frontend).

    inputs = NetworkInputs.of(config)
    x = inputs.training(batch)                     # with the batch's "augment" numbers: gain and SpecAugment
    logits = inputs.evaluation_logits(apply, batch)  # several crops per clip: the mean of their logits
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from jaxnets.data import check_data_config
from jaxnets.sound.config import SoundConfig
from jaxnets.sound.frontend import network_input


@dataclasses.dataclass(frozen=True)
class NetworkInputs:
    sound: SoundConfig | None  # None: the batches hold images, which the network takes as they are

    @classmethod
    def of(cls, config: Any) -> NetworkInputs:
        return cls(sound=check_data_config(config).sound)

    def training(self, batch: dict) -> jax.Array:
        if self.sound is None:
            return batch["image"]
        return network_input(batch["image"], self.sound, uniforms=batch.get("augment"))

    def evaluation(self, batch: dict) -> jax.Array:
        """The network's input for unaugmented batches of one crop per example."""
        if self.sound is None:
            return batch["image"]
        return network_input(batch["image"], self.sound)

    def evaluation_logits(self, apply: Callable[[jax.Array], jax.Array], batch: dict) -> jax.Array:
        """`apply`'s logits [B, K] for an evaluation batch; for clips cut into several crops ([B, crops, samples]),
        the mean of the crops' logits."""
        x = self.evaluation(batch)
        if self.sound is None or self.sound.eval_crops == 1:
            return apply(x)
        examples, crops = x.shape[:2]
        logits = apply(x.reshape(examples * crops, *x.shape[2:]))
        return logits.reshape(examples, crops, -1).mean(axis=1)
