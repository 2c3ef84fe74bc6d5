"""Building blocks shared by the fixed-arc and the shared-weight ENAS macro networks."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxnets.models.layers import (
    Conv,
    avg_pool,
    batch_norm,
    batch_norm_axis,
    conv2d,
    conv_batch_norm,
    max_pool,
)
from jaxnets.models.normalization import examples_per_channel, unbiased

# Ops by id, as in the official code.
CONV3, SEP3, CONV5, SEP5, AVG_POOL, MAX_POOL = range(6)
KERNEL_SIZE = {CONV3: 3, SEP3: 3, CONV5: 5, SEP5: 5}
SEPARABLE = (SEP3, SEP5)

BN_EPSILON = 1e-5  # the official `batch_norm`
MASKED_BN_EPSILON = 1e-3  # the official `batch_norm_with_mask`, after a search branch's kxk conv


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "depthwise"))  # one compile per shape, not 3
def he_normal(key, shape, dtype=jnp.float32, *, depthwise: bool = False):
    """TF1 `keras.initializers.he_normal`: truncated at 2 std, std = sqrt(2 / fan_in), not rescaled.

    fan_in follows TF: receptive field x input channels. TF stores a depthwise kernel as [k, k, C, 1],
    so its fan_in is k*k*C; ours is stored [k, k, 1, C] (HWIO, groups=C), hence `depthwise`.
    """
    receptive = math.prod(shape[:-2])
    fan_in = receptive * (shape[-1] if depthwise else shape[-2])
    std = math.sqrt(2.0 / fan_in)
    return (std * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)).astype(dtype)


depthwise_he_normal = functools.partial(he_normal, depthwise=True)


def filters_per_layer(num_layers: int, num_filters: int, doubling: bool) -> tuple[int, ...]:
    """Output channels of every layer; in fixed mode C doubles after each pool layer."""
    out, c = [], num_filters
    for k in range(num_layers):
        out.append(c)
        if doubling and k in pool_layers(num_layers):
            c *= 2
    return tuple(out)


def pool_layers(num_layers: int) -> tuple[int, ...]:
    """Layers followed by a factorized reduction: official `[L//3 - 1, 2*(L//3) - 1]` (none if L < 3)."""
    distance = num_layers // 3
    return tuple(k for k in (distance - 1, 2 * distance - 1) if k >= 0)


def pool3x3(x: jax.Array, op: int) -> jax.Array:
    """3x3 stride-1 SAME pool; the average excludes padded cells (TF's `average_pooling2d`)."""
    if op == AVG_POOL:
        return avg_pool(x, size=3, stride=1, padding=1)
    if op == MAX_POOL:
        return max_pool(x, size=3, stride=1, padding=1)
    raise ValueError(f"op {op} is not a pool")


class ConvBN(nn.Module):
    """[ReLU ->] conv (no bias) -> BN [-> ReLU]; the one place the ENAS networks build a conv but for the skip
    connections' 1x1 (`ConcatConvBN`) and the factorized reductions'.

    `separable`: depthwise kxk (multiplier 1) then pointwise 1x1, nothing between. With a `mask` the BN
    is a `MaskedBatchNorm` (same variables), for the search network's channel mode. `post_relu`: the ReLU that
    the output's consumers would apply, applied here instead; in inference on the CPU the BN and that ReLU run
    inside the convolution (oneDNN post-ops: `layers.conv_batch_norm`), saving XLA a pass over the output.
    """

    features: int
    kernel_size: int = 1
    separable: bool = False
    pre_relu: bool = False
    post_relu: bool = False
    epsilon: float = BN_EPSILON
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool, mask: jax.Array | None = None):
        if self.pre_relu:
            x = nn.relu(x)
        conv = functools.partial(Conv, dtype=self.dtype, kernel_init=he_normal)
        k = self.kernel_size
        if self.separable:
            c = x.shape[-1]
            x = conv(c, k, padding=k // 2, groups=c, kernel_init=depthwise_he_normal, name="depthwise")(x)
            last_conv = conv(self.features, 1, name="pointwise")
        else:
            last_conv = conv(self.features, k, padding=k // 2, name="conv")
        if mask is not None:
            y = MaskedBatchNorm(epsilon=self.epsilon, dtype=self.dtype, name="bn")(last_conv(x), mask, train)
            return nn.relu(y) if self.post_relu else y
        norm = batch_norm(train, self.dtype, epsilon=self.epsilon)(name="bn")
        return conv_batch_norm(x, last_conv, norm, activation="relu" if self.post_relu else None)


class _Kernel(nn.Module):
    """A conv kernel parameter on its own: the `conv/kernel` of ConvBN's parameter tree."""

    shape: tuple[int, ...]

    @nn.compact
    def __call__(self):
        return self.param("kernel", he_normal, self.shape)


# The largest concatenation of skip inputs ConcatConvBN builds in inference: the released child's at 64 images of
# 32x32 (9 x 96 channels, 226 MB), where it was measured as fast as the sum.
INFERENCE_CONCATENATION_BYTES = 256 * 2**20


def _concatenation_fits(inputs, dtype) -> bool:
    """Whether the inputs' concatenation takes at most INFERENCE_CONCATENATION_BYTES. An export's symbolic batch
    (jaxnets.export) fits: its program serves any batch, and gets the reference's one convolution per skip."""
    if any(jax.export.is_symbolic_dim(d) for x in inputs for d in x.shape):
        return True
    return sum(x.size for x in inputs) * jnp.dtype(dtype).itemsize <= INFERENCE_CONCATENATION_BYTES


class ConcatConvBN(nn.Module):
    """1x1 conv -> BN of the channel concatenation of `inputs` (ReLU'd by the caller); in training without
    building it.

    The same maths and parameters as `ConvBN()` on `jnp.concatenate(inputs, -1)` (`conv/kernel`
    [1, 1, sum of the inputs' channels, features], `bn`). In training, the sum of each input's 1x1 conv with its
    rows of the kernel: a layer of the released child concatenates up to 9 x 96 channels at 32x32, and not copying
    them (nor their gradient) took its training step (batch 64, 2-core CPU) from 6.6 s to 5.2 s and its peak memory
    from 7.1 to 5.1 GB (benchmarks/cpu.py). In inference, where the concatenation takes at most
    `INFERENCE_CONCATENATION_BYTES`, one convolution of it, its BN as the convolution's epilogue
    (`layers.conv_batch_norm`): a third of the calls, which made the released child's forward of one image 1.36x
    faster natively and 1.25x with AVX2, 4 images 1.27x, and left 64 images a call as fast (1.03x and 1.00x;
    benchmarks/results/enas_skip_ab_xeon167*.md). Larger batches keep the sum: the concatenation is a copy of
    every input, 1.7 GB at the released child's evaluation batch of 500.
    """

    features: int
    epsilon: float = BN_EPSILON
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs, train: bool):
        norm = batch_norm(train, self.dtype, epsilon=self.epsilon)(name="bn")
        if not train and _concatenation_fits(inputs, self.dtype):
            x = jnp.concatenate([x.astype(self.dtype) for x in inputs], axis=-1)
            conv = Conv(self.features, 1, dtype=self.dtype, kernel_init=he_normal, name="conv")
            return conv_batch_norm(x, conv, norm)
        widths = [x.shape[-1] for x in inputs]
        kernel = _Kernel((1, 1, sum(widths), self.features), name="conv")().astype(self.dtype)
        starts = [sum(widths[:i]) for i in range(len(widths))]
        y = sum(conv2d(x.astype(self.dtype), kernel[:, :, start : start + width, :])
                for x, start, width in zip(inputs, starts, widths, strict=True))
        return norm(y)


class FactorizedReduction(nn.Module):
    """Stride-2 reduction without information loss: two offset 1x1 paths of C/2 each, concat, BN."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):  # [N, H, W, Cin] -> [N, ceil(H/2), ceil(W/2), features]
        if self.features % 2:
            raise ValueError(f"{self.name}: factorized reduction needs an even filter count, got {self.features}")
        conv = functools.partial(
            Conv, self.features // 2, 1, dtype=self.dtype, kernel_init=he_normal
        )
        # Path 1 is the 1x1 at stride 2, the same sums as on x[:, ::2, ::2] (bit for bit) without XLA's copy of it.
        path1 = conv(stride=2, name="path1_conv")(x)
        # Path 2 is shifted by one pixel: pad bottom/right, drop the first row/column, then stride.
        shifted = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))[:, 1:, 1:, :]
        path2 = conv(name="path2_conv")(shifted[:, ::2, ::2, :])
        y = jnp.concatenate([path1, path2], axis=-1)
        return batch_norm(train, self.dtype, epsilon=BN_EPSILON)(name="bn")(y)


class MaskedBatchNorm(nn.Module):
    """BN over the channels selected by a (traced) mask; the others output 0 and keep their statistics.

    The static-shape form of the official `batch_norm_with_mask`, which gathers the selected channels,
    normalises them (tf.nn.fused_batch_norm: the running variance moves towards the unbiased batch variance) and
    scatters moving-average updates back. Variables are named like `normalization.BatchNorm`'s.
    """

    epsilon: float = MASKED_BN_EPSILON
    momentum: float = 0.9
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask, train: bool):  # x: [N, H, W, C], mask: [C] bool
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        if train:
            axis_name = batch_norm_axis()  # synchronised BN under data parallelism
            average = (lambda v: jax.lax.pmean(v, axis_name)) if axis_name else (lambda v: v)
            x32 = x.astype(jnp.float32)
            mean = average(x32.mean(axis=(0, 1, 2), keepdims=True))
            var = average(jnp.square(x32 - mean).mean(axis=(0, 1, 2)))
            mean = mean.reshape(c)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = jnp.where(mask, m * ra_mean.value + (1 - m) * mean, ra_mean.value)
                var_update = unbiased(var, examples_per_channel(x, axis_name))  # as TF's fused batch norm
                ra_var.value = jnp.where(mask, m * ra_var.value + (1 - m) * var_update, ra_var.value)
        else:
            mean, var = ra_mean.value, ra_var.value
        mul = jnp.where(mask, scale * jax.lax.rsqrt(var + self.epsilon), 0.0)
        shift = jnp.where(mask, bias - mean * mul, 0.0)
        return x * mul.reshape(1, 1, 1, c).astype(self.dtype) + shift.reshape(1, 1, 1, c).astype(self.dtype)


class Head(nn.Module):
    """Global average pool -> dropout (keep_prob, train only) -> dense without bias."""

    num_classes: int
    keep_prob: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):  # [N, H, W, C] -> [N, num_classes] float32
        x = x.mean(axis=(1, 2))
        x = nn.Dropout(1.0 - self.keep_prob, deterministic=not train, name="dropout")(x)
        x = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype, kernel_init=he_normal, name="fc")(x)
        return x.astype(jnp.float32)


def check_fields(model: nn.Module) -> None:
    """Fails before anything is traced, naming the bad field."""
    if model.num_layers < 1:
        raise ValueError(f"{type(model).__name__}.num_layers must be >= 1, got {model.num_layers}")
    if not 1 <= model.num_branches <= 6:
        raise ValueError(f"{type(model).__name__}.num_branches must be in 1..6, got {model.num_branches}")
    if model.num_filters < 1:
        raise ValueError(f"{type(model).__name__}.num_filters must be >= 1, got {model.num_filters}")
    if not 0.0 < model.keep_prob <= 1.0:
        raise ValueError(f"{type(model).__name__}.keep_prob must be in (0, 1], got {model.keep_prob}")
