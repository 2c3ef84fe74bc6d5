"""Convolution, pooling, normalisation and initialisers shared by every jaxnets model.

All convolutions go through `conv2d`, which is where the platform-dependent lowering lives. The stored
kernel is always the Flax/HWIO layout `[kh, kw, in/groups, out]`, whatever the lowering, so a
checkpoint written on a GPU opens on a CPU and vice versa.

Why the lowering matters (measured on the 2-core CPU machines, forward+backward, see benchmarks/): XLA:CPU's
native grouped convolution is 25-70x slower than the same maths expressed as dense block-diagonal convolutions
or batched matmuls ("decomposed"), which are still 8-15x slower than oneDNN's kernels ("onednn", what PyTorch
uses: jaxnets/ops/onednn.py), and its depthwise convolution ~8x slower than nine shifted multiply-adds. On GPU
and TPU the native `lax.conv_general_dilated` is what cuDNN / the TPU compiler want, so "auto" keeps it there."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from jaxnets.models.normalization import BatchNorm
from jaxnets.models.recomputed import Recomputed
from jaxnets.ops import onednn

Lowering = Literal["auto", "xla", "decomposed", "onednn"]
LOWERINGS = ("auto", "xla", "decomposed", "onednn")
LOWERING_ENV_VAR = "JAXNETS_CONV_LOWERING"
CONV_KINDS = ("pointwise", "dense", "grouped", "depthwise")

# The registry: for each (platform, kind of convolution), the lowerings that compute it, best first; the
# first one available is taken. oneDNN (jaxnets/ops/onednn.py) is the library PyTorch's CPU convolutions
# use; "decomposed" is the best pure-JAX formulation measured on XLA:CPU (below), for CPUs without oneDNN's
# wheel. Platforms not listed (GPU, TPU) take XLA's native convolution: cuDNN and the TPU compiler.
_PREFERRED: dict[tuple[str, str], tuple[str, ...]] = {("cpu", kind): ("onednn", "decomposed") for kind in CONV_KINDS}
_DEFAULT_PREFERRED = ("xla",)

_OVERRIDE: contextvars.ContextVar[str] = contextvars.ContextVar("jaxnets_conv_lowering", default="auto")
_SEPARATE_BATCH_NORM: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxnets_separate_bn", default=False)
_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("jaxnets_conv_platform", default=None)

# Below this many input channels per group the CPU lowering builds one dense block-diagonal kernel
# (`groups`x the FLOPs, at dense-conv speed); from it on, one batched matmul per kernel tap. Chosen on
# the whole ResNeXt-50 step (benchmarks/README.md): 0.76 s at 16, 0.77 s at 9, 1.01 s at 5; at 33 the
# 1024-channel stage goes block-diagonal, where XLA:CPU's dense conv degrades to 14.8 s.
_BLOCK_DIAGONAL_MAX_GROUP_WIDTH = 16

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


@contextlib.contextmanager
def conv_lowering(lowering: Lowering, platform: str | None = None):
    """Inside this context (at trace time), every convolution whose own `lowering` is "auto" uses `lowering`.

    The trainer sets it from `config.conv_lowering`; a model never stores it, so checkpoints never depend on
    it. A function jitted before entering the context keeps the lowering it was traced with.

    `platform` ("cpu", "gpu", ...), where the caller knows where the function will run (a trainer: its mesh's
    devices), makes every convolution trace that platform's lowering only. Without it a convolution is a
    `lax.platform_dependent` choice between the CPU's lowering and the others', and JAX traces and
    differentiates both; inside a `lax.switch` (the ENAS search network's) the residuals of both are carried too
    (benchmarks/results/enas_search_step.md).
    """
    _check_name(lowering)
    token = _OVERRIDE.set(lowering)
    platform_token = _PLATFORM.set(platform)
    try:
        yield
    finally:
        _PLATFORM.reset(platform_token)
        _OVERRIDE.reset(token)


def conv_kind(kernel_shape: tuple[int, ...], groups: int) -> str:
    kh, kw, group_in, out = kernel_shape
    if groups == 1:
        return "pointwise" if kh == kw == 1 else "dense"
    return "depthwise" if group_in == 1 and out == groups else "grouped"


def resolve_lowering(lowering: Lowering = "auto", platform: str | None = None, kind: str = "dense") -> str:
    """The lowering that computes a `kind` convolution on `platform` (default: JAX's default backend).

    Precedence: an explicit `lowering`, then the `conv_lowering` context, then $JAXNETS_CONV_LOWERING, then
    the registry's first available lowering for (platform, kind). oneDNN runs on the CPU only: asked for
    elsewhere, XLA's convolution is used (but `conv2d` resolves the CPU's lowering too, so asking for "onednn"
    where it is not built raises even for a GPU run). oneDNN computes float32, and bfloat16 where the CPU can;
    other dtypes take the "decomposed" formulations.
    """
    platform = platform or jax.default_backend()
    for choice in (lowering, _OVERRIDE.get(), os.environ.get(LOWERING_ENV_VAR, "auto")):
        _check_name(choice)
        if choice != "auto":
            break
    if choice == "auto":
        return next(name for name in _PREFERRED.get((platform, kind), _DEFAULT_PREFERRED) if _available(name))
    if choice == "onednn" and platform != "cpu":
        return "xla"
    if not _available(choice):
        raise ValueError(f"conv lowering {choice!r} is not available: jaxnets was installed without its oneDNN "
                         "extension (Linux x86-64 only); use 'auto'")
    return choice


def _check_name(lowering: str) -> None:
    if lowering not in LOWERINGS:
        raise ValueError(f"conv lowering {lowering!r} is not one of {LOWERINGS} "
                         f"(check config.conv_lowering, ${LOWERING_ENV_VAR} or the lowering passed to conv2d)")


def _available(lowering: str) -> bool:
    if lowering == "onednn":
        return onednn.available()
    return True


@functools.partial(jax.tree_util.register_dataclass, data_fields=["scale", "shift", "residual"],
                   meta_fields=["activation"])
@dataclasses.dataclass(frozen=True)
class Epilogue:
    """What follows a convolution in inference, applied to its output z: `activation(z * scale + shift + residual)`.

    That is a BatchNorm with its running statistics (scale and shift: float32 [out channels]), a residual add and a
    ReLU or ReLU6: how every layer of ResNe(X)t and MobileNetV2 ends. The oneDNN lowering applies it inside the
    convolution (post-ops on its accumulators: `onednn.conv2d_fused`); the others, after it, in XLA.
    """

    scale: jax.Array
    shift: jax.Array
    residual: jax.Array | None = None
    activation: Literal["relu", "relu6"] | None = None

    def apply(self, z: jax.Array) -> jax.Array:
        """In XLA, after a convolution (in z's dtype: conv_batch_norm fuses only a BN of the convolution's dtype)."""
        return onednn.apply_epilogue(z, self.scale, self.shift, self.residual, self.activation)

    def after_bias(self, bias: jax.Array) -> Epilogue:
        """This epilogue applied to z + bias, as one on z: (z + b) * scale + shift = z * scale + (b * scale + shift)."""
        return dataclasses.replace(self, shift=self.shift + bias.astype(jnp.float32) * self.scale)


def conv2d(
    x: jax.Array | Recomputed,
    kernel: jax.Array,
    *,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    lowering: Lowering = "auto",
    epilogue: Epilogue | None = None,
) -> jax.Array:
    """NHWC convolution with symmetric zero padding (PyTorch's `padding=p`) and HWIO kernel, then `epilogue`. `x` may
    be a `Recomputed` input, which oneDNN's lowering does not keep for the backward.

    The lowering is chosen where the arrays live, when the function is lowered for a platform
    (`lax.platform_dependent`): a notebook on a GPU host that runs a model on the CPU gets the CPU lowering.
    Inside `conv_lowering(..., platform=...)` it is chosen for that platform when tracing.
    """
    kh, kw, group_in, out = kernel.shape
    channels = x.shape[-1]
    if channels != group_in * groups:
        raise ValueError(
            f"conv input has {channels} channels but the kernel expects {group_in} x {groups} groups"
        )
    kind = conv_kind(kernel.shape, groups)
    lower = functools.partial(_lower_with, stride=stride, padding=padding, groups=groups, epilogue=epilogue)
    pinned = _PLATFORM.get()
    if pinned is not None:
        return lower(_LOWER[resolve_lowering(lowering, pinned, kind)], x, kernel)
    on_cpu, elsewhere = (_LOWER[resolve_lowering(lowering, platform, kind)] for platform in ("cpu", "elsewhere"))
    if on_cpu is elsewhere:
        return lower(on_cpu, x, kernel)
    return lax.platform_dependent(x, kernel, cpu=functools.partial(lower, on_cpu),
                                  default=functools.partial(lower, elsewhere))


def _lower_with(lowering, x, kernel, *, stride, padding, groups, epilogue):
    if lowering is _onednn_conv:
        return _onednn_conv(x, kernel, stride, padding, groups, epilogue)
    x = x.value() if isinstance(x, Recomputed) else x
    y = lowering(x, kernel, stride, padding, groups)
    return y if epilogue is None else epilogue.apply(y)


def _onednn_conv(x, kernel, stride, padding, groups, epilogue=None):
    if isinstance(x, Recomputed):
        if epilogue is not None or not all(jnp.dtype(t) == jnp.float32 for t in (x.pre.dtype, x.dtype, kernel.dtype)):
            return _onednn_conv(x.value(), kernel, stride, padding, groups, epilogue)
        pre = x.pre
        kh, kw, _, _ = kernel.shape
        if kh == kw == 1 and stride > 1 and padding == 0:  # as below (the activation is elementwise)
            pre, stride = pre[:, ::stride, ::stride, :], 1
        return onednn.conv2d_of_activated(pre, x.mul, x.shift, kernel, x.activation, stride=stride, padding=padding,
                                          groups=groups)
    if x.dtype not in onednn.supported_dtypes():  # e.g. bfloat16 on a CPU without AVX-512
        y = _decomposed_conv(x, kernel, stride, padding, groups)
        return y if epilogue is None else epilogue.apply(y)
    if epilogue is not None and not _fits_post_ops(epilogue.residual, x, kernel, stride, padding, groups):
        return epilogue.apply(_onednn_conv(x, kernel, stride, padding, groups))
    kh, kw, _, _ = kernel.shape
    if kh == kw == 1 and stride > 1 and padding == 0:  # reads every stride-th pixel: slice, then a 1x1 conv
        x, stride = x[:, ::stride, ::stride, :], 1
    if epilogue is None:
        return onednn.conv2d(x, kernel, stride=stride, padding=padding, groups=groups)
    return onednn.conv2d_fused(x, kernel, epilogue.scale, epilogue.shift, epilogue.residual, epilogue.activation,
                               stride=stride, padding=padding, groups=groups)


def _fits_post_ops(residual, x, kernel, stride, padding, groups) -> bool:
    """Whether oneDNN can add `residual` as a post-op: none, or one of the output's shape and dtype (a bfloat16
    convolution plus a float32 residual is float32, and a broadcast residual is XLA's to add)."""
    if residual is None:
        return True
    shape = onednn.conv2d_shape(x, kernel, stride=stride, padding=padding, groups=groups)
    return residual.dtype == x.dtype and tuple(residual.shape) == tuple(shape)


def _decomposed_conv(x, kernel, stride, padding, groups):
    if jnp.finfo(x.dtype).bits < 32:  # bf16: sums in float32, one rounding per result (the shifted and per-tap
        # sums would otherwise round every partial sum to bf16: a depthwise kernel gradient was 11% off)
        return _decomposed_conv(x.astype(jnp.float32), kernel.astype(jnp.float32), stride, padding,
                                groups).astype(x.dtype)
    kh, kw, group_in, out = kernel.shape
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    if groups == 1:
        if kh == kw == 1:
            return _pointwise(x[:, ::stride, ::stride, :], kernel[0, 0])
        return _xla_conv(x, kernel, stride, 0, 1)  # dense kxk: XLA's conv is as fast as anything else
    if group_in == 1 and out == groups:
        return _depthwise_shifted(x, kernel[:, :, 0, :], stride)
    if group_in < _BLOCK_DIAGONAL_MAX_GROUP_WIDTH:
        return _xla_conv(x, _block_diagonal(kernel, groups), stride, 0, 1)
    return _grouped_per_tap(x, kernel, stride, groups)


def _xla_conv(x, kernel, stride, padding, groups):
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=_DIMENSION_NUMBERS,
        feature_group_count=groups,
    )


_LOWER = {"xla": _xla_conv, "decomposed": _decomposed_conv, "onednn": _onednn_conv}


def _pointwise(x, matrix):  # [N, H, W, C] @ [C, O]
    return jnp.einsum("nhwc,co->nhwo", x, matrix)


def _taps(x, kh, kw, stride):
    """Yields (i, j, window) for each kernel tap; x is already padded. window: [N, Ho, Wo, C]."""
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    for i in range(kh):
        for j in range(kw):
            yield i, j, x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride, :]


def _depthwise_shifted(x, kernel, stride):  # kernel: [kh, kw, C]
    kh, kw, channels = kernel.shape
    kernel = kernel.reshape(kh, kw, 1, 1, 1, channels)  # broadcast over [N, Ho, Wo] explicitly
    return sum(window * kernel[i, j] for i, j, window in _taps(x, kh, kw, stride))


def _block_diagonal(kernel, groups):
    """[kh, kw, in/g, out] grouped kernel -> the equivalent dense [kh, kw, in, out] kernel."""
    kh, kw, group_in, out = kernel.shape
    per_group = kernel.reshape(kh, kw, group_in, groups, out // groups)
    eye = jnp.eye(groups, dtype=kernel.dtype)
    dense = jnp.einsum("hwcgo,Gg->hwGcgo", per_group, eye)
    return dense.reshape(kh, kw, groups * group_in, out)


def _grouped_per_tap(x, kernel, stride, groups):
    kh, kw, group_in, out = kernel.shape
    per_group = kernel.reshape(kh, kw, group_in, groups, out // groups)
    total = 0
    for i, j, window in _taps(x, kh, kw, stride):
        n, h, w, _ = window.shape
        window = window.reshape(n, h, w, groups, group_in)
        total = total + jnp.einsum("nhwgc,cgo->nhwgo", window, per_group[i, j])
    return total.reshape(n, h, w, out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, size: int, stride: int, padding: int) -> jax.Array:
    """NHWC max pool (PyTorch's `MaxPool2d(size, stride, padding)`) as the maximum of size*size strided slices.

    XLA:CPU's reduce-window and its gradient ran 10x slower (ResNeXt-50's 3x3/2 stem pool at 64x64, batch 32:
    34 ms forward+backward, 3 ms this way). As in PyTorch, each window's gradient goes to its first maximum in
    row-major order (ties included) and a NaN is the maximum of any window it is in. The backward keeps only
    which tap won, one byte per output: differentiating the chain of maxima instead made XLA recompute it for
    every tap (ResNeXt-50's pool: 18 ms of a 480 ms step, against PyTorch's 2 ms).
    """
    return _max_pool_with_taps(x, size, stride, padding)[0]


def _max_pool_with_taps(x, size, stride, padding):
    """-> (the pool, the index of each output's winning tap in row-major order: int8, or int32 past 127 taps)."""
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf)
    index_dtype = jnp.int8 if size * size <= 127 else jnp.int32
    best, winner = None, None
    for tap, (_, _, window) in enumerate(_taps(padded, size, size, stride)):
        if best is None:
            best, winner = window, jnp.zeros(window.shape, index_dtype)
            continue
        wins = (window > best) | jnp.isnan(window)  # strictly greater: an earlier tap keeps a tie
        best, winner = jnp.where(wins, window, best), jnp.where(wins, jnp.asarray(tap, index_dtype), winner)
    return best, winner


def _max_pool_forward(x, size, stride, padding):
    pooled, winner = _max_pool_with_taps(x, size, stride, padding)
    return pooled, (winner, x.shape)


def _max_pool_backward(size, stride, padding, residuals, gradient):
    winner, (n, height, width, channels) = residuals
    padded_height, padded_width = height + 2 * padding, width + 2 * padding
    out_height, out_width = gradient.shape[1:3]
    zero = jnp.zeros((), gradient.dtype)
    total = jnp.zeros((n, padded_height, padded_width, channels), gradient.dtype)
    for tap in range(size * size):
        i, j = divmod(tap, size)
        # The transpose of tap (i, j)'s strided slice of the padded input: back to its positions, zeros between.
        placed = jax.lax.pad(jnp.where(winner == tap, gradient, zero), zero,
                             ((0, 0, 0), (i, padded_height - i - stride * (out_height - 1) - 1, stride - 1),
                              (j, padded_width - j - stride * (out_width - 1) - 1, stride - 1), (0, 0, 0)))
        total = total + placed
    return (total[:, padding : padding + height, padding : padding + width, :],)


max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def avg_pool(x: jax.Array, size: int, stride: int, padding: int) -> jax.Array:
    """NHWC average pool over the cells inside the image (`count_include_pad=False`), as a sum of strided
    slices divided by a constant count (see `max_pool` for why not reduce-window)."""
    zeros = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    total = sum(window for _, _, window in _taps(jnp.pad(x, zeros), size, size, stride))
    inside = np.pad(np.ones((1, *x.shape[1:3], 1), np.float32), zeros)
    count = sum(window for _, _, window in _taps(inside, size, size, stride))
    return (total / count).astype(x.dtype)


# PyTorch's `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, untruncated, as torchvision uses.
torch_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_linear_init(key, shape, dtype=jnp.float32):
    """nn.Linear's default weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")(key, shape, dtype)


def torch_linear_bias_init(fan_in: int):
    bound = 1.0 / fan_in**0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Conv(nn.Module):
    """2D convolution with PyTorch padding semantics and a backend-dependent lowering.

    Parameters are named like `flax.linen.Conv` (`kernel` [kh, kw, in/groups, out], `bias` [out]).
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32
    kernel_init: Any = torch_conv_init
    bias_init: Any = nn.initializers.zeros
    lowering: Lowering = "auto"

    @nn.compact
    def __call__(self, x: jax.Array | Recomputed, epilogue: Epilogue | None = None):
        in_features = x.shape[-1]
        if in_features % self.groups or self.features % self.groups:
            raise ValueError(
                f"{self.name}: {in_features} -> {self.features} channels are not divisible by "
                f"groups={self.groups}"
            )
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, in_features // self.groups, self.features))
        kernel = kernel.astype(self.dtype)
        bias = self.param("bias", self.bias_init, (self.features,)) if self.use_bias else None
        if bias is not None and epilogue is not None:
            epilogue, bias = epilogue.after_bias(bias), None
        if isinstance(x, Recomputed) and jnp.dtype(x.dtype) != jnp.dtype(self.dtype):
            x = x.value()
        if not isinstance(x, Recomputed):
            x = x.astype(self.dtype)
        y = conv2d(x, kernel, stride=self.stride, padding=self.padding, groups=self.groups, lowering=self.lowering,
                   epilogue=epilogue)
        if bias is not None:
            y = y + bias.astype(self.dtype).reshape(1, 1, 1, self.features)
        return y

    def lowering_on_cpu(self, in_features: int) -> str | None:
        """The lowering this convolution takes where it runs on the CPU; None where it is traced for another platform
        only (inside `conv_lowering(..., platform=...)`)."""
        pinned = _PLATFORM.get()
        if pinned not in (None, "cpu"):
            return None
        k = self.kernel_size
        kind = conv_kind((k, k, in_features // self.groups, self.features), self.groups)
        return resolve_lowering(self.lowering, "cpu", kind)


@contextlib.contextmanager
def separate_batch_norm():
    """Inside this context (at trace time), every BN runs as a module of its own after its convolution, never as
    the convolution's epilogue, and its output is computed and kept in training (never a `Recomputed`): for code that
    finds or replaces BN modules by intercepting their calls (`jaxnets.models.folding`), or inspects each module's
    output (`capture_intermediates`, `nn.tabulate`)."""
    token = _SEPARATE_BATCH_NORM.set(True)
    try:
        yield
    finally:
        _SEPARATE_BATCH_NORM.reset(token)


def conv_batch_norm(x: jax.Array | Recomputed, conv: Conv, norm: BatchNorm, *, residual: jax.Array | None = None,
                    activation: Literal["relu", "relu6"] | None = None,
                    recompute_output: bool = False) -> jax.Array | Recomputed:
    """`activation(norm(conv(x)) + residual)`: how every layer of ResNe(X)t and MobileNetV2 ends.

    In inference on the CPU (BN with its running statistics, oneDNN convolutions), the BN, the residual and the
    activation are the convolution's epilogue: oneDNN applies them to its accumulators, and the output is written
    once instead of read and written again by XLA (ResNeXt-50's eval forward: 13% of its time). Elsewhere (training,
    GPU, XLA's lowering, `jaxnets.export`'s BN folding, a BN whose dtype is not the convolution's) the modules run
    one after another. Fused, the BN module's `__call__` never runs and the Conv's output is the whole layer's: code
    that inspects modules' calls (`capture_intermediates`, `nn.tabulate`, `nn.intercept_methods`) sees the layers
    apart inside `separate_batch_norm()`.

    With `recompute_output`, in training (and outside `separate_batch_norm()`), a layer without a residual returns
    its output as a `Recomputed`, for the next Conv alone to take: with oneDNN's lowering, the backward then computes
    it again instead of keeping it beside the convolution's output (jaxnets/models/recomputed.py). Its BN module's
    `__call__` never runs either (its statistics move as they do when it runs); the BN must be jaxnets' `BatchNorm`
    (its `affine`), as every model's is. A caller that does not pin the platform (`conv_lowering(..., platform=...)`,
    as the trainer does) traces both platforms' lowerings, and may keep the input for the other's.
    """
    fusable = (norm.use_running_average and not _SEPARATE_BATCH_NORM.get()
               and jnp.dtype(norm.dtype) == jnp.dtype(conv.dtype))
    if fusable and conv.lowering_on_cpu(x.shape[-1]) == "onednn":
        scale, shift = norm.inference_affine(conv.features)
        return conv(x, epilogue=Epilogue(scale, shift, residual, activation))
    if recompute_output and not norm.use_running_average and residual is None and not _SEPARATE_BATCH_NORM.get():
        y = conv(x)
        mul, shift = norm.affine(y.shape[-1], y)
        return Recomputed(y, mul, shift, activation, norm.dtype)
    y = norm(conv(x))
    return onednn.ACTIVATIONS[activation](y if residual is None else y + residual)


_BATCH_NORM_AXIS = contextvars.ContextVar("jaxnets_batch_norm_axis", default=None)


@contextlib.contextmanager
def synchronized_batch_norm(axis_name: str | None):
    """Inside this context (at trace time), every BN computes batch statistics over `axis_name` too.

    The data-parallel step wraps `model.apply` in it so BN sees the global batch, like
    `nn.logical_axis_rules` sets sharding rules without threading them through every module.
    """
    token = _BATCH_NORM_AXIS.set(axis_name)
    try:
        yield
    finally:
        _BATCH_NORM_AXIS.reset(token)


def batch_norm_axis() -> str | None:
    return _BATCH_NORM_AXIS.get()


def trace_settings() -> tuple:
    """Every setting a layer's trace reads besides its inputs (convolution lowering, platform, BN axis, separate BN),
    hashable.

    A cache of traced functions keys on it, so a trace made under one setting is never reused under another.
    Not in it: `normalization.frozen_statistics`, which depends on each BN's module path (a caller that caches
    traces of unbound modules must not cache while it is set: ENAS's `shared.switched_ops`).
    """
    lowering = (_OVERRIDE.get(), _PLATFORM.get(), os.environ.get(LOWERING_ENV_VAR, "auto"), jax.default_backend())
    return (*lowering, _BATCH_NORM_AXIS.get(), _SEPARATE_BATCH_NORM.get())


def batch_norm(train: bool, dtype: Any = jnp.float32, **kwargs) -> functools.partial:
    """BatchNorm as PyTorch trains it (momentum 0.1 == Flax 0.9, eps 1e-5, running variance from the unbiased batch
    variance) with float32 statistics."""
    kwargs = {"momentum": 0.9, "epsilon": 1e-5, "axis_name": batch_norm_axis() if train else None, **kwargs}
    return functools.partial(BatchNorm, use_running_average=not train, dtype=dtype, param_dtype=jnp.float32, **kwargs)
