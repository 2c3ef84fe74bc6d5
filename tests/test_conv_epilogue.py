"""A convolution's epilogue (BN in inference, residual, ReLU/ReLU6): oneDNN applies it in the convolution, and
computes what XLA computes after it, forward and backward; models in inference use it, models in training do not."""

import collections
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conv_cases import ONEDNN_WHEEL_EXISTS, onednn_run_logged, random_case
from flax import linen as nn

from jaxnets.models import create_model, layers
from jaxnets.models.normalization import BatchNorm

pytestmark = pytest.mark.skipif(not ONEDNN_WHEEL_EXISTS, reason="oneDNN's wheel exists for Linux x86-64 only")

# Each oneDNN kernel family (1x1, strided 1x1, dense, grouped, strided grouped, depthwise), each epilogue.
EPILOGUES = [("pointwise", "relu", True), ("pointwise_strided", None, False), ("dense_3x3", "relu6", True),
             ("grouped_block_diagonal", "relu", False), ("grouped_block_diagonal_strided", "relu", True),
             ("depthwise_3x3_strided", "relu6", False), ("grouped_3x3_on_1x1", None, True)]


def output_shape(x, kernel, stride, padding):
    size = (x.shape[1] + 2 * padding - kernel.shape[0]) // stride + 1
    return (x.shape[0], size, size, kernel.shape[-1])


def random_epilogue(shape, residual: bool, activation, dtype=jnp.float32) -> layers.Epilogue:
    rng = np.random.default_rng(1)
    scale, shift = (jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32) for _ in range(2))
    residual = jnp.asarray(rng.standard_normal(shape), dtype) if residual else None
    return layers.Epilogue(scale, shift, residual, activation)


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4, 5))
def conv_epilogue_and_grads(lowering, operands, stride, padding, groups, activation):
    def loss(x, kernel, scale, shift, residual):
        epilogue = layers.Epilogue(scale, shift, residual, activation)
        y = layers.conv2d(x, kernel, stride=stride, padding=padding, groups=groups, lowering=lowering,
                          epilogue=epilogue)
        return jnp.sum(jnp.sin(y)), y

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True)(*operands)


@pytest.mark.parametrize(("case", "activation", "residual"), EPILOGUES)
def test_onednn_epilogue_matches_xla_forward_and_backward(case, activation, residual):
    x, kernel, stride, padding, groups = random_case(case)
    epilogue = random_epilogue(output_shape(x, kernel, stride, padding), residual, activation)
    operands = (x, kernel, epilogue.scale, epilogue.shift, epilogue.residual)
    (_, want), want_grads = conv_epilogue_and_grads("xla", operands, stride, padding, groups, activation)
    (_, got), grads = conv_epilogue_and_grads("onednn", operands, stride, padding, groups, activation)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    names = ("input", "kernel", "scale", "shift", "residual")
    for got_grad, want_grad, name in zip(grads, want_grads, names, strict=True):
        if want_grad is not None:
            # (sums over every position: float32 round-off relative to the largest, where they cancel)
            np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(want_grad))),
                                       err_msg=f"{case}: d/d{name}")


def test_onednn_epilogue_in_bfloat16_rounds_once():
    """bfloat16 where the CPU computes it: the epilogue on the float32 accumulators, one rounding at the end (so
    within one bfloat16 step of the float32 result)."""
    from jaxnets.ops import onednn

    if jnp.dtype(jnp.bfloat16) not in onednn.supported_dtypes():
        pytest.skip("this CPU has no bfloat16 convolutions (AVX-512 or AVX2-VNNI-2): the XLA path computes them")
    x, kernel, stride, padding, groups = random_case("dense_3x3")
    epilogue = random_epilogue(output_shape(x, kernel, stride, padding), True, "relu")
    want = layers.conv2d(x, kernel, stride=stride, padding=padding, groups=groups, lowering="xla",
                         epilogue=epilogue)
    bf16 = layers.Epilogue(epilogue.scale, epilogue.shift, epilogue.residual.astype(jnp.bfloat16), "relu")
    got = layers.conv2d(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), stride=stride, padding=padding,
                        groups=groups, lowering="onednn", epilogue=bf16)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=2**-7, atol=0.1)


def test_onednn_epilogue_in_bfloat16_differentiates_as_xla_does():
    """The fused bfloat16 convolution's gradients (its activation's mask read off the bfloat16 output) against
    XLA's bfloat16 lowering's, within bfloat16's rounding of sums over every position."""
    from jaxnets.ops import onednn

    if jnp.dtype(jnp.bfloat16) not in onednn.supported_dtypes():
        pytest.skip("this CPU has no bfloat16 convolutions (AVX-512 or AVX2-VNNI-2): the XLA path computes them")
    x, kernel, stride, padding, groups = random_case("dense_3x3", jnp.bfloat16)
    epilogue = random_epilogue(output_shape(x, kernel, stride, padding), True, "relu6", jnp.bfloat16)
    operands = (x, kernel, epilogue.scale, epilogue.shift, epilogue.residual)
    _, want_grads = conv_epilogue_and_grads("xla", operands, stride, padding, groups, "relu6")
    _, grads = conv_epilogue_and_grads("onednn", operands, stride, padding, groups, "relu6")
    for got_grad, want_grad, name in zip(grads, want_grads, ("input", "kernel", "scale", "shift", "residual"),
                                         strict=True):
        assert got_grad.dtype == want_grad.dtype, name
        want_grad = want_grad.astype(jnp.float32)
        np.testing.assert_allclose(got_grad.astype(jnp.float32), want_grad, rtol=2**-5,
                                   atol=2**-5 * float(jnp.max(jnp.abs(want_grad))), err_msg=f"d/d{name}")


# Runs fused forwards (input size, in channels, out channels, kernel, padding, groups, activation, residual) through
# oneDNN and through XLA, and prints the largest difference.
FUSED_AGAINST_XLA = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jaxnets.models import layers
worst = 0.0
for size, cin, cout, k, pad, groups, activation, residual in json.loads(sys.argv[1]):
    rng = np.random.default_rng(size * cin + cout)
    x = jnp.asarray(rng.standard_normal((2, size, size, cin), dtype=np.float32))
    kernel = jnp.asarray(rng.standard_normal((k, k, cin // groups, cout), dtype=np.float32) / np.sqrt(k * k * cin))
    out = (2, size + 2 * pad - k + 1, size + 2 * pad - k + 1, cout)
    epilogue = layers.Epilogue(jnp.asarray(rng.standard_normal(cout), jnp.float32),
                               jnp.asarray(rng.standard_normal(cout), jnp.float32),
                               jnp.asarray(rng.standard_normal(out), jnp.float32) if residual else None, activation)
    results = [jax.jit(lambda x, k, e: layers.conv2d(x, k, padding=pad, groups=groups, lowering=lowering,
                                                     epilogue=e))(x, kernel, epilogue)
               for lowering in ("onednn", "xla")]
    worst = max(worst, float(jnp.max(jnp.abs(results[0] - results[1]))))
print("worst", worst)
"""


def test_the_epilogue_is_post_ops_of_a_direct_convolution_or_one_binary_pass_after_the_others():
    """Natively, a grouped convolution with an epilogue runs as one oneDNN convolution, with the epilogue as its
    post-ops, and a 1x1 one of few rows as one oneDNN matmul with the same post-ops (test_layers.py). A convolution
    oneDNN computes as a gemm (a padded 1x1 from 3 channels: CIFAR MobileNetV2's stem) runs plain, then one oneDNN
    binary pass: its gemm applies post-ops 70x slower. On AVX2, oneDNN 3.2's grouped forward with 4 channels per group
    runs as its transpose's backward-data (test_layers.py), which takes no post-ops: one binary pass after it too."""
    shapes = [(6, 16, 32, 1, 0, 1, "relu", True), (9, 32, 32, 3, 1, 8, "relu6", False), (6, 3, 32, 1, 1, 1, "relu6",
                                                                                         False)]
    executed, worst = onednn_run_logged(FUSED_AGAINST_XLA, shapes, isa=None)
    primitives = [line for line in executed if ",matmul," in line or ",convolution," in line or ",binary," in line]
    kinds = [line.split(",")[3] for line in primitives]
    assert kinds == ["matmul", "convolution", "convolution", "binary"], executed
    assert all("attr-post-ops:binary_mul" in line for line in primitives[:2]), primitives
    assert "gemm" in primitives[2] and "attr-post-ops" not in primitives[2], primitives
    assert worst < 1e-4, f"a fused convolution differs from XLA's by {worst}"

    executed, worst = onednn_run_logged(FUSED_AGAINST_XLA, shapes[1:2], isa="AVX2")
    kinds = [line.split(",")[3:6:2] for line in executed  # (primitive, propagation)
             if ",convolution," in line or ",binary," in line]
    assert kinds == [["convolution", "backward_data"], ["binary", "undef"]], executed
    assert worst < 1e-4, f"a transposed convolution and its epilogue differ from XLA's by {worst}"


def test_a_residual_oneDNN_cannot_add_is_added_by_xla():
    """A broadcast residual, or a float32 one after a bfloat16 convolution, is not a post-op: the onednn lowering
    adds it after the convolution, as the others do (a float32 result in the second case)."""
    x, kernel, stride, padding, groups = random_case("dense_3x3")
    shape = output_shape(x, kernel, stride, padding)
    for residual, dtype in ((jnp.ones((1, 1, 1, shape[-1])), jnp.float32), (jnp.ones(shape), jnp.bfloat16)):
        bn = random_epilogue(shape, False, None)
        epilogue = layers.Epilogue(bn.scale, bn.shift, residual, "relu")
        got, want = (layers.conv2d(x.astype(dtype), kernel.astype(dtype), padding=padding, lowering=lowering,
                                   epilogue=epilogue) for lowering in ("onednn", "xla"))
        assert got.dtype == want.dtype == jnp.promote_types(dtype, residual.dtype)
        np.testing.assert_allclose(got.astype(jnp.float32), want.astype(jnp.float32), rtol=1e-2, atol=1e-2)


def test_a_batch_norm_of_another_dtype_than_its_convolution_is_not_fused():
    """bfloat16 convolution, float32 BN: the layer's output is the BN's float32 in eval as in training."""
    class Layer(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            conv = layers.Conv(8, 3, padding=1, dtype=jnp.bfloat16)
            return layers.conv_batch_norm(x, conv, layers.batch_norm(train)(), activation="relu")

    x = jnp.ones((1, 6, 6, 4))
    variables = Layer().init(jax.random.key(0), x, train=False)
    eval_output = Layer().apply(variables, x, train=False)
    train_output, _ = Layer().apply(variables, x, train=True, mutable=["batch_stats"])
    assert eval_output.dtype == train_output.dtype == jnp.float32


def test_after_bias_moves_a_bias_into_the_shift():
    z, bias = jnp.arange(8.0).reshape(1, 1, 2, 4), jnp.asarray([1.0, -2.0, 3.0, 0.5])
    epilogue = random_epilogue(z.shape, True, "relu")
    np.testing.assert_allclose(epilogue.after_bias(bias).apply(z), epilogue.apply(z + bias.reshape(1, 1, 1, 4)),
                               rtol=1e-6)


def fused_calls(model, x, train: bool) -> int:
    def apply(variables, x):
        if not train:
            return model.apply(variables, x, train=False)
        return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})

    with layers.conv_lowering("auto", "cpu"):  # (traced and lowered, not compiled nor run)
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        return jax.jit(apply).lower(variables, x).as_text().count("jaxnets_onednn_conv_forward_fused")


@pytest.mark.parametrize(("name", "convolutions"), [("resnext50_32x4d", 53), ("mobilenet_v2", 52), ("resnet18", 20),
                                                    ("cifar_mobilenet_v2", 53)])
def test_every_convolution_of_an_inference_forward_takes_its_bn_and_none_in_training(name, convolutions):
    model = create_model(name, num_classes=10)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    assert fused_calls(model, x, train=False) == convolutions
    assert fused_calls(model, x, train=True) == 0


def with_random_statistics(variables, rng):
    """`variables` with every BN's running mean and variance drawn from U(0.5, 1.5), so that an eval-mode epilogue
    has a scale and shift to get wrong."""
    return {**variables, "batch_stats": jax.tree.map(
        lambda v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape), jnp.float32), variables["batch_stats"])}


def test_an_inference_forward_and_its_input_gradient_equal_the_unfused_ones():
    """ResNeXt in eval mode (randomised BN statistics) with oneDNN's epilogues against XLA's lowering, logits and
    the gradient of the input (saliency maps differentiate an eval-mode model)."""
    model = create_model("resnext50_32x4d", num_classes=10, stage_sizes=(1, 1), stage_planes=(8, 16), groups=4,
                         width_per_group=32)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 16, 16, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    variables = with_random_statistics(variables, rng)

    def logits_and_saliency(lowering):
        def top_logit(x):
            return model.apply(variables, x, train=False)[:, 3].sum()

        with layers.conv_lowering(lowering, "cpu"):
            return jax.jit(lambda x: (model.apply(variables, x, train=False), jax.grad(top_logit)(x)))(x)

    (logits, saliency), (want_logits, want_saliency) = logits_and_saliency("onednn"), logits_and_saliency("xla")
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(saliency, want_saliency, rtol=1e-4, atol=1e-5)


def test_an_inference_models_input_gradient_is_one_backward_data_call_per_convolution():
    """The gradient of the input through fused convolutions (a saliency map) reads each activation's mask off the
    layer's output: one fused forward and one backward-data call per convolution, none computed again (which had
    made ResNeXt-50's saliency maps at 224 px 0.86x PyTorch's: benchmarks/results/saliency_*.md)."""
    model = create_model("resnext50_32x4d", num_classes=10, stage_sizes=(1, 1), stage_planes=(8, 16), groups=4,
                         width_per_group=32)
    x = jnp.ones((2, 16, 16, 3), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    with layers.conv_lowering("onednn", "cpu"):
        saliency = jax.jit(jax.grad(lambda x: model.apply(variables, x, train=False).max(axis=-1).sum()))
        compiled = saliency.lower(x).compile().as_text()
    calls = collections.Counter(re.findall(r'custom_call_target="jaxnets_onednn_conv_(\w+)"', compiled))
    convolutions = 1 + 2 * 4  # the stem; per stage one block of three convolutions and its projection shortcut
    assert calls == {"forward_fused": convolutions, "input_gradient": convolutions}, calls


def test_inference_affine_is_refused_for_a_bn_that_normalises_by_its_batch():
    with pytest.raises(ValueError, match="normalises by its batch"):
        BatchNorm(use_running_average=False).init(jax.random.key(0), 4, method=BatchNorm.inference_affine)


def test_the_enas_child_runs_each_conv_bn_and_the_relu_after_it_inside_the_convolution():
    """In the ENAS child's inference forward each ConvBN's BN, and the ReLU its output's consumers apply (`post_relu`),
    are the convolution's epilogue: the stem's, each convolution layer's inp_conv and out_conv (a separable one's
    pointwise), each pool layer's inp_conv, and the BN of each later layer's skip 1x1 (one convolution of the
    concatenation in inference, a sum of 1x1s in training); not the factorized reductions (a concatenation of two
    convolutions). Its logits equal those of XLA's lowering (randomised BN statistics)."""
    arc = "1 4 1 2 0 1"  # separable 3x3; average pool with the skip from layer 0; 5x5 with the skip from layer 1
    model = create_model("enas_macro", num_classes=10, arc=arc, num_layers=3, num_filters=8, num_branches=6)
    shape = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    assert fused_calls(model, shape, train=False) == 1 + 2 + 1 + 2 + 2
    # A batch whose concatenations would pass INFERENCE_CONCATENATION_BYTES keeps the sums (no copy of the inputs).
    large = jax.ShapeDtypeStruct((2**20, 16, 16, 3), jnp.float32)  # (traced only)
    assert fused_calls(model, large, train=False) == 1 + 2 + 1 + 2
    assert fused_calls(model, shape, train=True) == 0
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape.shape), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    variables = with_random_statistics(variables, rng)

    def logits(lowering):
        with layers.conv_lowering(lowering, "cpu"):
            return jax.jit(lambda x: model.apply(variables, x, train=False))(x)

    np.testing.assert_allclose(logits("onednn"), logits("xla"), rtol=1e-5, atol=1e-5)
