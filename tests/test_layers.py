"""Every conv lowering computes what XLA's native convolution computes, forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets.models import layers

# (in channels, out channels, kernel, stride, padding, groups): one case per path of `conv2d`.
CASES = {
    "pointwise": (16, 24, 1, 1, 0, 1),
    "pointwise_strided": (16, 24, 1, 2, 0, 1),
    "dense_3x3": (8, 12, 3, 1, 1, 1),
    "dense_7x7_strided": (3, 8, 7, 2, 3, 1),
    "grouped_block_diagonal": (32, 32, 3, 1, 1, 8),  # 4 channels per group
    "grouped_block_diagonal_strided": (32, 64, 3, 2, 1, 8),
    "grouped_per_tap": (64, 64, 3, 1, 1, 2),  # 32 channels per group
    "grouped_per_tap_strided": (64, 32, 3, 2, 1, 2),
    "grouped_1x1": (32, 32, 1, 1, 0, 4),
    "depthwise_3x3": (24, 24, 3, 1, 1, 24),
    "depthwise_3x3_strided": (24, 24, 3, 2, 1, 24),
    "depthwise_5x5": (12, 12, 5, 1, 2, 12),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_decomposed_lowering_matches_xla(case):
    cin, cout, k, stride, padding, groups = CASES[case]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 9, 9, cin), dtype=np.float32))
    kernel = jnp.asarray(rng.standard_normal((k, k, cin // groups, cout), dtype=np.float32))

    def loss(lowering, x, kernel):
        y = layers.conv2d(x, kernel, stride=stride, padding=padding, groups=groups, lowering=lowering)
        weights = jnp.sin(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
        return jnp.sum(y * weights), y

    (_, y_xla), grads_xla = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)("xla", x, kernel)
    (_, y_dec), grads_dec = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)("decomposed", x, kernel)
    np.testing.assert_allclose(y_dec, y_xla, rtol=1e-5, atol=1e-4)
    for g_dec, g_xla, what in zip(grads_dec, grads_xla, ("input", "kernel"), strict=True):
        np.testing.assert_allclose(g_dec, g_xla, rtol=1e-5, atol=1e-4, err_msg=f"{case}: d/d{what}")


def test_auto_lowering_follows_backend_and_environment(monkeypatch):
    monkeypatch.delenv(layers.LOWERING_ENV_VAR, raising=False)
    assert layers.resolve_lowering("auto") == ("decomposed" if jax.default_backend() == "cpu" else "xla")
    monkeypatch.setenv(layers.LOWERING_ENV_VAR, "xla")
    assert layers.resolve_lowering("auto") == "xla"
    assert layers.resolve_lowering("decomposed") == "decomposed"  # an explicit choice beats the environment


def test_unknown_lowering_is_named():
    with pytest.raises(ValueError, match="conv lowering 'cudnn' is not one of"):
        layers.resolve_lowering("cudnn")


def test_parameters_do_not_depend_on_lowering():
    x = jnp.ones((1, 8, 8, 16))
    shapes = {
        lowering: jax.tree.map(jnp.shape, layers.Conv(32, 3, groups=4, use_bias=True, lowering=lowering).init(
            jax.random.key(0), x))
        for lowering in ("xla", "decomposed")
    }
    assert shapes["xla"] == shapes["decomposed"] == {"params": {"kernel": (3, 3, 4, 32), "bias": (32,)}}


def test_conv_rejects_indivisible_groups():
    with pytest.raises(ValueError, match="not divisible by groups=3"):
        layers.Conv(8, 3, groups=3).init(jax.random.key(0), jnp.ones((1, 4, 4, 8)))


def test_bf16_compute_keeps_float32_parameters():
    conv = layers.Conv(8, 3, padding=1, dtype=jnp.bfloat16)
    variables = conv.init(jax.random.key(0), jnp.ones((1, 4, 4, 8)))
    assert variables["params"]["kernel"].dtype == jnp.float32
    assert conv.apply(variables, jnp.ones((1, 4, 4, 8))).dtype == jnp.bfloat16


def test_torch_conv_init_is_untruncated_fan_out_normal():
    kernel = layers.torch_conv_init(jax.random.key(0), (3, 3, 64, 256))
    expected_std = np.sqrt(2.0 / (3 * 3 * 256))
    assert abs(float(jnp.std(kernel)) / expected_std - 1) < 0.02
    assert float(jnp.max(jnp.abs(kernel))) > 2.5 * expected_std  # a truncated normal stops at 2 std
