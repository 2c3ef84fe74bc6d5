"""A convolution whose input training computes again in its backward instead of keeping it (`layers.conv_batch_norm`'s
`recompute_output`, `onednn.conv2d_of_activated`): the forward of the separate layers to the bit, their gradients,
less memory kept for the backward; MobileNetV2's blocks pass their expanded tensors this way."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conv_cases import ONEDNN_WHEEL_EXISTS, random_case

from jaxnets.models import layers, normalization
from jaxnets.models.mobilenetv2 import InvertedResidual
from jaxnets.ops import onednn

pytestmark = pytest.mark.skipif(not ONEDNN_WHEEL_EXISTS, reason="oneDNN's wheel exists for Linux x86-64 only")

# Each oneDNN kernel-gradient family (1x1 as a matmul, strided 1x1, dense, grouped, depthwise), each activation.
CASES = [("pointwise", "relu6"), ("pointwise_strided", "relu"), ("dense_3x3_strided_odd", None),
         ("grouped_block_diagonal", "relu"), ("depthwise_3x3_strided", "relu6"), ("dense_3x3_on_2x2", "relu6")]


def per_channel(channels: int):
    """A BN's map that sends part of a unit normal input below 0 and part above 6 (both ends of ReLU6 cut)."""
    rng = np.random.default_rng(1)
    return jnp.asarray(rng.uniform(1.0, 4.0, channels), jnp.float32), jnp.asarray(rng.normal(1.0, 2.0, channels),
                                                                                 jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4, 5))
def loss_and_grads(recomputed: bool, operands, activation, stride, padding, groups):
    def loss(pre, scale, shift, kernel):
        if recomputed:
            y = onednn.conv2d_of_activated(pre, scale, shift, kernel, activation, stride=stride, padding=padding,
                                           groups=groups)
        else:
            x = onednn.apply_epilogue(pre, scale, shift, activation=activation)
            y = onednn.conv2d(x, kernel, stride=stride, padding=padding, groups=groups)
        return jnp.sum(jnp.sin(y)), y

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(*operands)


@pytest.mark.parametrize(("case", "activation"), CASES)
def test_conv_of_activated_is_the_conv_of_the_activation_forward_and_backward(case, activation):
    pre, kernel, stride, padding, groups = random_case(case)
    operands = (pre, *per_channel(pre.shape[-1]), kernel)
    (_, y), grads = loss_and_grads(True, operands, activation, stride, padding, groups)
    (_, expected_y), expected_grads = loss_and_grads(False, operands, activation, stride, padding, groups)
    np.testing.assert_array_equal(y, expected_y)
    for name, got, expected in zip(("pre", "scale", "shift", "kernel"), grads, expected_grads, strict=True):
        scale = float(jnp.abs(expected).max())
        assert scale > 0, name
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def test_bad_inputs_are_named():
    pre, kernel, *_ = random_case("dense_3x3")
    scale, shift = per_channel(pre.shape[-1])
    with pytest.raises(ValueError, match="float32, not bfloat16"):
        onednn.conv2d_of_activated(pre.astype(jnp.bfloat16), scale, shift, kernel.astype(jnp.bfloat16), "relu")
    with pytest.raises(ValueError, match=r"scale \(3,\) and shift \(8,\) must be \(8,\)"):
        onednn.conv2d_of_activated(pre, scale[:3], shift, kernel, "relu")
    with pytest.raises(ValueError, match="activation 'gelu' is not one of"):
        onednn.conv2d_of_activated(pre, scale, shift, kernel, "gelu")


BLOCK_INPUT = (8, 16, 16, 16)  # the expanded tensors: 8 x 16 x 16 x 96 float32, 768 KiB each


def block_grads(lowering: str, recompute: bool, frozen: bool):
    """(compiled loss-and-gradients of a MobileNetV2 block in training, its operands): expand 6x, depthwise 3x3,
    project, residual; traced with the expanded tensors recomputed, or with the BNs run as separate modules; with
    every BN's statistics frozen (fine-tuning) or from the batch."""
    block = InvertedResidual(out_features=16, stride=1, expand_ratio=6, expand_when_t1=False,
                             conv=layers.Conv, norm=layers.batch_norm(train=True))
    x = jax.random.normal(jax.random.key(0), BLOCK_INPUT)
    variables = block.init(jax.random.key(1), x)

    def loss(params, x):
        y, updates = block.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y)), (y, updates)

    grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    with layers.conv_lowering(lowering, "cpu"), normalization.frozen_statistics(".*" if frozen else None):
        if recompute:
            return grads.lower(variables["params"], x).compile(), (variables["params"], x)
        with layers.separate_batch_norm():
            return grads.lower(variables["params"], x).compile(), (variables["params"], x)


@pytest.mark.parametrize(("lowering", "frozen"), [("onednn", False), ("onednn", True), ("xla", False)])
def test_a_mobilenet_v2_block_keeps_less_and_computes_the_same(lowering, frozen):
    """oneDNN's lowering keeps neither expanded activation for the backward (2 x 768 KiB less scratch, but for the
    room each kernel gradient computes its input in, while it runs); XLA's lowering computes the same values and
    keeps them, as before."""
    recomputed, operands = block_grads(lowering, recompute=True, frozen=frozen)
    separate, _ = block_grads(lowering, recompute=False, frozen=frozen)
    (_, (y, stats)), grads = recomputed(*operands)
    (_, (expected_y, expected_stats)), expected_grads = separate(*operands)
    np.testing.assert_array_equal(y, expected_y)
    jax.tree.map(np.testing.assert_array_equal, stats, expected_stats)
    for got, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(jnp.abs(expected).max()))
    expanded = 4 * np.prod(BLOCK_INPUT[:3]) * 96
    saved = separate.memory_analysis().temp_size_in_bytes - recomputed.memory_analysis().temp_size_in_bytes
    if lowering == "onednn":
        assert saved >= expanded, (saved, expanded)
    else:
        assert saved == 0, saved
