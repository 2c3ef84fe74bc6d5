"""A convolution's input that training computes again in the backward instead of keeping.

Training keeps each convolution's input for its kernel gradient. Where that input is `activation(BN(pre))` and `pre`
is the previous convolution's output, the BN's backward keeps `pre` as well: the same values twice, in two forms.
`layers.conv_batch_norm(..., recompute_output=True)` returns its output in training as a `Recomputed`, and a `Conv`
given one with oneDNN's lowering keeps `pre` and the BN's per-channel map only: its kernel gradient computes the input
again inside its oneDNN call (`onednn.conv2d_of_activated`). MobileNetV2's blocks pass their expanded tensors
(6x the block's channels; a t=1 block's depthwise output) this way, and ResNe(X)t's bottlenecks their two inner
activations. Other lowerings (XLA's, on a GPU) compute the value and keep it, as before.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxnets.models.normalization import normalize
from jaxnets.ops import onednn


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Recomputed:
    """`activation((pre * mul + shift).astype(dtype))`, not computed yet: a BN in training (`mul`, `shift`: float32
    [channels], its map from the batch's statistics, or the running ones where frozen) and an activation, after a
    convolution whose output is `pre`."""

    pre: jax.Array
    mul: jax.Array
    shift: jax.Array
    activation: str | None = dataclasses.field(metadata={"static": True})
    dtype: Any = dataclasses.field(metadata={"static": True})

    @property
    def shape(self) -> tuple[int, ...]:
        return self.pre.shape

    def value(self) -> jax.Array:
        """The input itself: the BN's maths (as its `__call__`), then the activation."""
        return onednn.ACTIVATIONS[self.activation](normalize(self.pre, self.mul, self.shift, self.dtype))
