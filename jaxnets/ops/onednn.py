"""oneDNN convolutions on the CPU, as XLA FFI calls with a custom VJP.

The calls are built from csrc/onednn_conv.cc by `pip install` (scikit-build-core) where oneDNN's wheel
exists (Linux x86-64); elsewhere `available()` is False and jaxnets lowers convolutions through XLA.
`conv2d` has the semantics of `lax.conv_general_dilated` with NHWC/HWIO and symmetric padding, for
float32 and bfloat16; its gradient is oneDNN's backward-data and backward-weights convolutions.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import logging

import jax
import jax.numpy as jnp
import numpy as np


@functools.cache
def _extension():
    """The compiled module with its FFI targets registered, or None where it was not built."""
    try:
        library = next(f for f in importlib.metadata.distribution("onednn-cpu-gomp").files or ()
                       if f.name == "libdnnl.so.3")
        # Loaded by path first: the extension's dependency on libdnnl.so.3 then resolves to it (by its soname).
        ctypes.CDLL(str(library.locate()))
        from jaxnets.ops import _onednn  # the native extension: absent where it was not built
    except (importlib.metadata.PackageNotFoundError, StopIteration, ImportError, OSError) as e:
        logging.getLogger("jaxnets").debug("no oneDNN convolutions (%s: %s): XLA's are used", type(e).__name__, e)
        return None
    for name, handler in _onednn.handlers().items():
        jax.ffi.register_ffi_target(name, handler, platform="cpu")
    return _onednn


def available() -> bool:
    return _extension() is not None


@functools.cache
def supported_dtypes() -> tuple:
    """The dtypes `conv2d` computes on this CPU: float32, and bfloat16 where the CPU has AVX-512 (or
    AVX2-VNNI-2); () where the extension is not built."""
    extension = _extension()
    if extension is None:
        return ()
    bfloat16 = (jnp.dtype(jnp.bfloat16),) if extension.bfloat16_supported() else ()
    return (jnp.dtype(jnp.float32), *bfloat16)


def version() -> str | None:
    extension = _extension()
    return extension.version() if extension is not None else None


def _built_extension():
    """The extension, for the functions that only mean something where it is built."""
    extension = _extension()
    if extension is None:
        raise RuntimeError("jaxnets' oneDNN extension is not built here (onednn.available() is False)")
    return extension


def set_matmul_max_rows(rows: int) -> int:
    """1x1 convolutions (stride 1, unpadded) of at most `rows` rows (batch x height x width) compute each pass as a
    oneDNN matmul on the buffers as they lie, the kernel never reordered; larger ones as oneDNN convolutions. The
    default (`default_matmul_max_rows`) is where the matmuls stopped being faster on the machines measured
    (csrc/onednn_conv.cc); 0: never. Applies to every call from then on, already compiled programs included. Returns
    the previous value."""
    extension = _built_extension()
    if rows < 0:
        raise ValueError(f"set_matmul_max_rows: rows must be >= 0, got {rows}")
    return extension.set_matmul_max_rows(rows)


def default_matmul_max_rows() -> int:
    """The limit `set_matmul_max_rows` starts from, by the instruction set oneDNN runs (`ONEDNN_MAX_CPU_ISA`
    honoured): 2048 rows with AVX-512, 512 with AVX2, whose matmul is a plain gemm in oneDNN 3.2."""
    return _built_extension().default_matmul_max_rows()


def set_chunked_kernel_gradients(chunked: bool) -> bool:
    """Whether the float32 kernel gradient of a 1x1 convolution (stride 1, unpadded, ungrouped) of more rows than
    `set_matmul_max_rows` allows is computed by oneDNN's sgemm over chunks of rows, summed per run of rows, rather than
    by oneDNN's convolution kernel. The default (`default_chunked_kernel_gradients`) is where the chunks were faster
    on the machine measured, a 2-core Xeon with and without `ONEDNN_MAX_CPU_ISA=AVX2` (csrc/onednn_conv.cc). Applies
    to every call that runs from then on, already compiled programs included (JAX dispatches asynchronously: wait for
    earlier results first). Returns the previous value."""
    return _built_extension().set_chunked_kernel_gradients(bool(chunked))


def default_chunked_kernel_gradients() -> bool:
    """The setting `set_chunked_kernel_gradients` starts from: on where oneDNN runs AVX2 kernels (no AVX-512;
    `ONEDNN_MAX_CPU_ISA` honoured), whose 1x1 kernel-gradient kernel the chunks beat; off with AVX-512."""
    return _built_extension().default_chunked_kernel_gradients()


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding: int = 0, groups: int = 1) -> jax.Array:
    """NHWC x HWIO convolution with PyTorch's symmetric `padding`, through oneDNN (CPU only).

    Differentiable in reverse mode (`jax.grad`, `jax.vjp`); a `jax.custom_vjp` has no forward mode (`jax.jvp`).
    """
    y_shape = conv2d_shape(x, kernel, stride=stride, padding=padding, groups=groups)
    x, kernel = _varying_alike(_cropped(x, kernel, y_shape, stride, padding), kernel)
    return _conv(x, kernel, stride, padding, groups)


def _cropped(x, kernel, y_shape, stride, padding):
    """Rows or columns past the last window are never read: cropped, so that oneDNN's far padding is >= 0."""
    (kh, kw), (_, height, width, _) = kernel.shape[:2], y_shape
    return x[:, : (height - 1) * stride + kh - padding, : (width - 1) * stride + kw - padding, :]


def apply_epilogue(z, scale, shift, residual=None, activation=None):
    """`activation(z * scale + shift + residual)` in XLA, BatchNorm's maths in z's dtype: what `conv2d_fused` applies
    in the convolution (and `layers.Epilogue` after the other lowerings)."""
    channels = (1,) * (z.ndim - 1) + (z.shape[-1],)
    y = (z * scale.reshape(channels) + shift.reshape(channels)).astype(z.dtype)
    return ACTIVATIONS[activation](y if residual is None else y + residual)


ACTIVATIONS = {None: lambda y: y, "relu": jax.nn.relu, "relu6": jax.nn.relu6}
_ACTIVATION_CODES = {None: 0, "relu": 1, "relu6": 2}  # csrc/onednn_conv.cc's Epilogue::Activation


def conv2d_fused(x: jax.Array, kernel: jax.Array, scale: jax.Array, shift: jax.Array,
                 residual: jax.Array | None = None, activation: str | None = None, *, stride: int = 1,
                 padding: int = 0, groups: int = 1) -> jax.Array:
    """`activation(conv2d(x, kernel) * scale + shift + residual)` in one oneDNN call, the epilogue applied to the
    convolution's accumulators (post-ops): a BatchNorm in inference (scale and shift: float32 [out channels]), a
    residual shaped like the output, then "relu", "relu6" or None.

    Meant for inference, where it saves the pass over the output that XLA would make; it is differentiable
    (`jax.grad` of an eval-mode model: saliency, adversarial inputs): the activation's mask is read off the output,
    and the convolution is computed again only for the scale's gradient (none where nothing asks for it).
    """
    y_shape = conv2d_shape(x, kernel, stride=stride, padding=padding, groups=groups)
    out = y_shape[-1]
    if activation not in ACTIVATIONS:
        raise ValueError(f"oneDNN fused convolution: activation {activation!r} is not one of {list(ACTIVATIONS)}")
    if scale.shape != (out,) or shift.shape != (out,):
        raise ValueError(f"oneDNN fused convolution: scale {scale.shape} and shift {shift.shape} must be ({out},)")
    if residual is not None and (residual.shape != y_shape or residual.dtype != x.dtype):
        raise ValueError(f"oneDNN fused convolution: residual {residual.shape} {residual.dtype} must be the "
                         f"output's {y_shape} {x.dtype}")
    x = _cropped(x, kernel, y_shape, stride, padding)
    scale, shift = scale.astype(jnp.float32), shift.astype(jnp.float32)
    operands = (x, kernel, scale, shift) + (() if residual is None else (residual,))
    return _fused(_varying_alike(*operands), activation, stride, padding, groups)


def conv2d_of_activated(pre: jax.Array, scale: jax.Array, shift: jax.Array, kernel: jax.Array,
                        activation: str | None = None, *, stride: int = 1, padding: int = 0,
                        groups: int = 1) -> jax.Array:
    """`conv2d(apply_epilogue(pre, scale, shift, activation=activation), kernel)`, float32: a convolution whose input
    is a BatchNorm's (scale, shift: float32 [channels]) and activation's output, whose backward keeps `pre` instead
    of that input.

    Training keeps each convolution's input for its kernel gradient; when the input is the activation of a BN of
    `pre`, the BN's backward keeps `pre` too: the same values twice. Here the backward's kernel gradient computes
    its input again inside its oneDNN call, from `pre` (one pass of oneDNN's binary primitive, into scratch that lives
    for that call only), and nothing in XLA's program keeps it. The forward is `conv2d` of XLA's activation, to the
    bit; the kernel gradient is computed at that input again, to float32 rounding (oneDNN's ReLU may turn a NaN into
    0 there: the loss is NaN by then).
    """
    if pre.dtype != jnp.float32 or kernel.dtype != jnp.float32:
        raise ValueError(f"conv2d_of_activated computes float32, not {pre.dtype} x {kernel.dtype}")
    y_shape = conv2d_shape(pre, kernel, stride=stride, padding=padding, groups=groups)
    channels = pre.shape[-1]
    if activation not in ACTIVATIONS:
        raise ValueError(f"conv2d_of_activated: activation {activation!r} is not one of {list(ACTIVATIONS)}")
    if scale.shape != (channels,) or shift.shape != (channels,):
        raise ValueError(f"conv2d_of_activated: scale {scale.shape} and shift {shift.shape} must be ({channels},)")
    pre = _cropped(pre, kernel, y_shape, stride, padding)  # (elementwise maps commute with the crop)
    operands = _varying_alike(pre, scale.astype(jnp.float32), shift.astype(jnp.float32), kernel)
    return _conv_of_activated(*operands, activation, stride, padding, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _conv_of_activated(pre, scale, shift, kernel, activation, stride, padding, groups):
    return _conv(apply_epilogue(pre, scale, shift, activation=activation), kernel, stride, padding, groups)


def _conv_of_activated_forward(pre, scale, shift, kernel, activation, stride, padding, groups):
    return _conv_of_activated(pre, scale, shift, kernel, activation, stride, padding, groups), (pre, scale, shift,
                                                                                               kernel)


def _conv_of_activated_backward(activation, stride, padding, groups, residuals, dy):
    pre, scale, shift, kernel = residuals
    attrs, _ = _geometry(pre.shape, kernel.shape, stride, padding, groups)
    dx = _input_gradient(dy, kernel, pre, attrs)
    # The second result is the room the call computes the input in: XLA's, so that its scratch counts it.
    dkernel, _ = jax.ffi.ffi_call("jaxnets_onednn_conv_kernel_gradient_of_activated",
                                  (_result(kernel.shape, kernel), _result(pre.shape, pre)), vmap_method="sequential")(
        pre, scale, shift, dy, activation=np.int64(_ACTIVATION_CODES[activation]), **attrs)
    # The activation's backward, from `pre` (XLA fuses the recomputed mask into the gradient's pass).
    _, pullback = jax.vjp(lambda p, a, b: apply_epilogue(p, a, b, activation=activation), pre, scale, shift)
    return (*pullback(dx), dkernel)


_conv_of_activated.defvjp(_conv_of_activated_forward, _conv_of_activated_backward)


def conv2d_shape(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding: int = 0, groups: int = 1):
    """The output shape of `conv2d(x, kernel, ...)`, after checking that oneDNN computes it here."""
    if _extension() is None:
        raise RuntimeError("jaxnets' oneDNN convolutions are not built here (see jaxnets.ops.onednn.available())")
    if x.dtype != kernel.dtype or x.dtype not in supported_dtypes():
        raise ValueError(f"oneDNN convolution here takes {[str(d) for d in supported_dtypes()]}, not "
                         f"{x.dtype} x {kernel.dtype}")
    if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2] * groups or kernel.shape[3] % groups:
        raise ValueError(f"oneDNN convolution: input {x.shape} and kernel {kernel.shape} (HWIO) do not fit "
                         f"groups={groups}")
    return _geometry(x.shape, kernel.shape, stride, padding, groups)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _fused(operands, activation, stride, padding, groups):
    x, kernel = operands[:2]
    attrs, out_shape = _geometry(x.shape, kernel.shape, stride, padding, groups)
    return jax.ffi.ffi_call("jaxnets_onednn_conv_forward_fused", _result(out_shape, x), vmap_method="sequential")(
        *operands, activation=np.int64(_ACTIVATION_CODES[activation]), **attrs)


def _fused_forward(operands, activation, stride, padding, groups):
    y = _fused(operands, activation, stride, padding, groups)
    return y, (operands, y)


def _activation_backward(activation, y, dy):
    """The activation's backward read off its output: ReLU passes dy where y > 0 and ReLU6 where 0 < y < 6, which is
    where their input was (the same as jax.nn's derivatives, 0 at the kinks), rounded to y's dtype as
    `apply_epilogue` rounds it (in bfloat16, an input just below 6 that rounds to 6 passes nothing)."""
    if activation is None:
        return dy
    passes = (y > 0) if activation == "relu" else (y > 0) & (y < 6)
    return jnp.where(passes, dy, jnp.zeros_like(dy))


def _fused_backward(activation, stride, padding, groups, residuals, dy):
    """The gradient of `apply_epilogue(conv2d(x, kernel), scale, shift, residual, activation)`, what `_fused`
    computes. The activation's mask comes from the output, so where only the input's gradient is asked for (a
    saliency map) the backward is one backward-data call per convolution, as in PyTorch. The convolution's output z
    is computed again for the scale's gradient alone, and XLA drops that call where nothing uses it (as it drops
    the kernel gradient's)."""
    operands, y = residuals
    x, kernel, scale, shift, *residual = operands
    d_pre = _activation_backward(activation, y, dy)  # the gradient of z * scale + shift + residual
    z, conv_pullback = jax.vjp(lambda x, kernel: _conv(x, kernel, stride, padding, groups), x, kernel)
    _, epilogue_pullback = jax.vjp(lambda z, scale, shift: apply_epilogue(z, scale, shift), z, scale, shift)
    dz, dscale, dshift = epilogue_pullback(d_pre)
    dx, dkernel = conv_pullback(dz)
    return ((dx, dkernel, dscale, dshift, *(d_pre for _ in residual)),)


_fused.defvjp(_fused_forward, _fused_backward)


def _varying_alike(*arrays):
    """Inside `shard_map`, makes every array vary over the mesh axes any of them varies over (what XLA's own
    convolution does implicitly): the results of an FFI call are typed like its inputs, and the gradient of
    a replicated kernel is then summed over the devices by the transpose of this cast."""
    varying = [_varying_axes(a) for a in arrays]
    union = frozenset().union(*varying)
    return tuple(jax.lax.pcast(a, tuple(sorted(union - v)), to="varying") if union - v else a
                 for a, v in zip(arrays, varying, strict=True))


def _varying_axes(array) -> frozenset:
    axis_type = getattr(jax.typeof(array), "manual_axis_type", None)
    return frozenset(axis_type.varying) if axis_type is not None else frozenset()


def _result(shape, like) -> jax.ShapeDtypeStruct:
    """An FFI result of `shape`, with `like`'s dtype and (inside shard_map) varying axes."""
    aval = jax.typeof(like)
    if not _varying_axes(like):
        return jax.ShapeDtypeStruct(shape, like.dtype)
    return jax.ShapeDtypeStruct(shape, like.dtype, sharding=aval.sharding, manual_axis_type=aval.manual_axis_type)


def _geometry(x_shape, kernel_shape, stride, padding, groups) -> tuple[dict, tuple[int, ...]]:
    """-> (the FFI calls' attributes, the output's shape)."""
    kh, kw, _, _ = kernel_shape
    height, width = (x_shape[1] + 2 * padding - kh) // stride + 1, (x_shape[2] + 2 * padding - kw) // stride + 1
    return dict(
        stride=np.int64(stride), groups=np.int64(groups), pad_top=np.int64(padding), pad_left=np.int64(padding),
        pad_bottom=np.int64((height - 1) * stride + kh - x_shape[1] - padding),
        pad_right=np.int64((width - 1) * stride + kw - x_shape[2] - padding),
    ), (x_shape[0], height, width, kernel_shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, stride, padding, groups):
    attrs, out_shape = _geometry(x.shape, kernel.shape, stride, padding, groups)
    return jax.ffi.ffi_call("jaxnets_onednn_conv_forward", _result(out_shape, x),
                            vmap_method="sequential")(x, kernel, **attrs)


def _conv_forward(x, kernel, stride, padding, groups):
    return _conv(x, kernel, stride, padding, groups), (x, kernel)


def _conv_backward(stride, padding, groups, residuals, dy):
    x, kernel = residuals
    attrs, _ = _geometry(x.shape, kernel.shape, stride, padding, groups)
    dx = _input_gradient(dy, kernel, x, attrs)
    dkernel = jax.ffi.ffi_call("jaxnets_onednn_conv_kernel_gradient", _result(kernel.shape, kernel),
                               vmap_method="sequential")(x, dy, **attrs)
    return dx, dkernel


_conv.defvjp(_conv_forward, _conv_backward)


def _input_gradient(dy, kernel, x, attrs):
    """The gradient of the convolution's input `x` (shaped and typed like it) given dy: oneDNN's backward-data."""
    return jax.ffi.ffi_call("jaxnets_onednn_conv_input_gradient", _result(x.shape, x),
                            vmap_method="sequential")(dy, kernel, **attrs)
