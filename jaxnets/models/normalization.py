"""Batch normalisation as the reference networks train it.

PyTorch's `nn.BatchNorm2d` and TensorFlow's fused batch norm (which the official ENAS code uses) move the running
variance towards the *unbiased* batch variance, n / (n - 1) times the biased one that normalises the batch; Flax's
`nn.BatchNorm` uses the biased one, so its running variances (hence every eval-mode output) drift from what the
same recipe gives in PyTorch: 1.6% on a ResNeXt-50 layer after one step at batch 8. The variables are named and
shaped like `nn.BatchNorm`'s (params `scale`, `bias`; batch_stats `mean`, `var`), so checkpoints written before
this module still load.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

# A regular expression of BN module paths ("layer1_0/bn1") whose statistics are frozen while it is set: those
# layers normalise with their running statistics and keep them, in training too (fine-tuning; set at trace time
# by the train step, as `layers.synchronized_batch_norm` sets the axis).
_FROZEN_STATISTICS = contextvars.ContextVar("jaxnets_frozen_batch_norm", default=None)


@contextlib.contextmanager
def frozen_statistics(pattern: str | None):
    """Inside this context (at trace time), every BN whose module path `re.search`es `pattern` is frozen."""
    token = _FROZEN_STATISTICS.set(pattern)
    try:
        yield
    finally:
        _FROZEN_STATISTICS.reset(token)


def frozen_statistics_pattern() -> str | None:
    """The pattern `frozen_statistics` set, or None."""
    return _FROZEN_STATISTICS.get()


def _statistics_frozen(path: tuple[str, ...]) -> bool:
    pattern = frozen_statistics_pattern()
    return pattern is not None and re.search(pattern, "/".join(path)) is not None


def examples_per_channel(x: jax.Array, axis_name: str | None) -> int:
    """n of the batch statistics: every position of every example, on every device of `axis_name` (synchronised
    statistics count the global batch, as PyTorch's SyncBatchNorm does)."""
    count = x.size // x.shape[-1]
    return count * jax.lax.psum(1, axis_name) if axis_name is not None else count


def unbiased(variance: jax.Array, count: int) -> jax.Array:
    """The running-variance update's input: Bessel's correction (a single value per channel stays as it is)."""
    return variance * (count / (count - 1)) if count > 1 else variance


def normalize(x: jax.Array, mul: jax.Array, shift: jax.Array, dtype: Any) -> jax.Array:
    """A BN's map (`BatchNorm.affine`: float32 [channels]) applied to x over its last axis, in `dtype`."""
    channels = (1,) * (x.ndim - 1) + (x.shape[-1],)  # (the suite forbids implicit rank promotion)
    # x * mul + shift rather than (x - mean) * mul + bias: autodiff then keeps x alone (which the statistics'
    # gradient needs anyway) and no centred copy of it for the backward (CIFAR ResNeXt-50: 1.1 GB less scratch).
    return (x * mul.reshape(channels) + shift.reshape(channels)).astype(dtype)


class BatchNorm(nn.Module):
    """BN over the last axis with float32 statistics; in training, the running averages move by
    `1 - momentum` (Flax's convention: 0.9 here is PyTorch's 0.1) towards the batch mean and the unbiased batch
    variance, and with `axis_name` the statistics are those of the batch over all its devices."""

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones  # (zeros: a residual branch's last BN, "zero-init residual")
    bias_init: Callable = nn.initializers.zeros

    def __call__(self, x):
        mul, shift = self.affine(x.shape[-1], x)
        return normalize(x, mul, shift, self.dtype)

    def inference_affine(self, features: int) -> tuple[jax.Array, jax.Array]:
        """(mul, shift), float32 [features], with which this BN maps x to x * mul + shift from its running statistics
        (in inference: what a convolution before it can apply itself, `layers.conv_batch_norm`)."""
        if not self.use_running_average:
            raise ValueError(f"{self.name}: inference_affine is the inference map; this BN normalises by its batch")
        return self.affine(features)

    @nn.compact
    def affine(self, features: int, x: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(mul, shift), float32 [features]: this BN's map x -> x * mul + shift, from the statistics of the batch `x`
        in training (whose running averages then move) or from the running statistics."""
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
        if self.use_running_average or _statistics_frozen(self.path):
            mean, var = ra_mean.value, ra_var.value
        else:
            # One pass, E[x^2] - E[x]^2 in float32, both moments in one all-reduce when synchronised (as Flax).
            x32 = x.astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            moments = jnp.stack([x32.mean(axes), jnp.square(x32).mean(axes)])
            axis_name = None if self.is_initializing() else self.axis_name
            if axis_name is not None:
                moments = jax.lax.pmean(moments, axis_name)
            mean = moments[0]
            var = jnp.maximum(0.0, moments[1] - jnp.square(mean))  # (round-off can make it negative)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                count = examples_per_channel(x, axis_name)
                ra_var.value = m * ra_var.value + (1 - m) * unbiased(var, count)
        mul = jax.lax.rsqrt(var + self.epsilon) * scale
        return mul, bias - mean * mul
