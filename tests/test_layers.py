"""Every conv lowering computes what XLA's native convolution computes, forward and backward; the registry
picks one per platform and kind of convolution, overridable by a context or the environment."""

import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conv_cases import CASES, ONEDNN_WHEEL_EXISTS, onednn_run_logged, random_case

from jaxnets.models import create_model, layers, list_models
from jaxnets.ops import onednn

CPU_LOWERINGS = ["decomposed", "onednn"]


def loss_and_grads(lowering, x, kernel, stride, padding, groups):
    def loss(x, kernel):
        y = layers.conv2d(x, kernel, stride=stride, padding=padding, groups=groups, lowering=lowering)
        weights = jnp.sin(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape).astype(y.dtype)
        return jnp.sum(y * weights, dtype=jnp.float32), y

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, kernel)


@pytest.mark.parametrize("lowering", CPU_LOWERINGS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_lowerings_match_xla(case, lowering):
    x, kernel, stride, padding, groups = random_case(case)
    (_, y_xla), grads_xla = loss_and_grads("xla", x, kernel, stride, padding, groups)
    (_, y), grads = loss_and_grads(lowering, x, kernel, stride, padding, groups)
    np.testing.assert_allclose(y, y_xla, rtol=1e-5, atol=1e-4)
    for got, want, what in zip(grads, grads_xla, ("input", "kernel"), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=f"{case}: d/d{what}")


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def conv_and_vjp(lowering, x, kernel, dy, stride, padding, groups):
    """(y, dL/dx, dL/dkernel) for the cotangent dy."""
    y, vjp = jax.vjp(lambda x, k: layers.conv2d(x, k, stride=stride, padding=padding, groups=groups,
                                                lowering=lowering), x, kernel)
    return (y, *vjp(dy))


@pytest.mark.parametrize("lowering", CPU_LOWERINGS)
@pytest.mark.parametrize("case", ["dense_3x3", "grouped_block_diagonal_strided", "grouped_per_tap", "depthwise_3x3"])
def test_bfloat16_convolutions_round_the_float32_result_once(case, lowering):
    """bfloat16 inputs and cotangent, float32 sums, one rounding to bfloat16 per result, forward and backward.

    Each result is r = sum_j a_j b_j over n terms with bfloat16 a_j, b_j: every product is exact in float32, so a
    float32 sum rounded once to bfloat16 is within u * |r| (u = 2^-8, bfloat16's unit roundoff: 8 significant bits)
    plus the float32 sums' own error, at most about n * 2^-24 * S with S = sum_j |a_j b_j| (in the result and in
    the float32 reference: 4 n 2^-24 S bounds both). That holds whatever the order of the sums (oneDNN with or
    without AVX-512 bf16, XLA) and measured up to 0.99 of it. What it catches: any error above half a bfloat16 ulp
    of the result (0.4%) plus ~1e-5 S, e.g. a dropped or misplaced term (terms are ~0.5 here, results ~10, so the
    bound is ~0.04) or partial sums held in bfloat16 (what the decomposed depthwise and per-tap sums did before
    they summed in float32: 15-1000x the bound; a depthwise kernel gradient of 24.0 for 24.6)."""
    x, kernel, stride, padding, groups = random_case(case, jnp.bfloat16)
    kh, kw, group_in, out = kernel.shape
    y_shape = jax.eval_shape(functools.partial(layers.conv2d, stride=stride, padding=padding, groups=groups,
                                               lowering="xla"), x, kernel).shape
    dy = jnp.sin(jnp.arange(np.prod(y_shape), dtype=jnp.float32)).reshape(y_shape).astype(jnp.bfloat16)
    got = conv_and_vjp(lowering, x, kernel, dy, stride, padding, groups)
    assert all(g.dtype == jnp.bfloat16 for g in got)
    exact = [a.astype(jnp.float32) for a in (x, kernel, dy)]  # the same bfloat16 values, in float32
    want = conv_and_vjp("xla", *exact, stride, padding, groups)
    sum_of_abs_terms = conv_and_vjp("xla", *map(jnp.abs, exact), stride, padding, groups)
    terms = (kh * kw * group_in, kh * kw * out // groups, y_shape[0] * y_shape[1] * y_shape[2])  # y, dx, dkernel
    for g, w, s, n, what in zip(got, want, sum_of_abs_terms, terms, ("y", "dx", "dkernel"), strict=True):
        g, w, s = (np.asarray(a, np.float64) for a in (g.astype(jnp.float32), w, s))
        bound = 2.0**-8 * np.abs(w) + 4 * n * 2.0**-24 * s
        excess = np.abs(g - w) / np.where(bound > 0, bound, 1.0)
        worst = np.unravel_index(np.argmax(excess), excess.shape)
        assert np.all(np.abs(g - w) <= bound), (
            f"{case} {what}: {g[worst]} against {w[worst]} in float32, {excess[worst]:.1f}x the bound at {worst}")


def at_most_two_blocks_per_stage(model) -> dict:
    """Overrides that keep a stage's first block (which changes width or stride) and one of its repeats (all alike):
    the same distinct convolutions, in a fraction of the tracing."""
    if hasattr(model, "stage_sizes"):  # ResNet/ResNeXt
        return {"stage_sizes": tuple(min(n, 2) for n in model.stage_sizes)}
    if hasattr(model, "stages"):  # MobileNetV2
        return {"stages": tuple((expand, channels, min(n, 2), stride) for expand, channels, n, stride in model.stages)}
    return {}  # ENAS: its layers differ by position (pooling layers, skip inputs)


def zoo_conv_shapes():
    """Every distinct convolution of every model in the zoo at 32x32 (ImageNet models included: their last
    stages are then 1x1, smaller than their 3x3 kernels): (input [H, W, C], kernel [kh, kw, C/g, O], stride,
    padding, groups), recorded by tracing each model's init (at most two blocks per stage)."""
    shapes = set()
    traced = layers.conv2d

    def record(x, kernel, *, stride=1, padding=0, groups=1, **rest):
        shapes.add((tuple(x.shape[1:]), tuple(kernel.shape), stride, padding, groups))
        return traced(x, kernel, stride=stride, padding=padding, groups=groups, **rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layers, "conv2d", record)
        for name in list_models():
            model = create_model(name, num_classes=10)
            model = create_model(name, num_classes=10, **at_most_two_blocks_per_stage(model))
            jax.eval_shape(functools.partial(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    return sorted(shapes)


def lowering_path(shape) -> tuple:
    """What decides the code a lowering runs for a convolution: its kind, kernel, stride, padding, channels per
    group (block-diagonal or per-tap), and how the input's size meets the kernel (smaller than it; odd or even
    under a stride). Two of the zoo's convolutions with the same path differ only in sizes the code never reads."""
    (height, _, _), (kh, kw, group_in, out), stride, padding, groups = shape
    kind = layers.conv_kind((kh, kw, group_in, out), groups)
    return kind, kh, kw, stride, padding, group_in, out // groups, height < kh, height % stride


def test_cpu_lowerings_match_xla_on_every_convolution_of_the_zoo():
    """Batch 1, one convolution of the zoo per distinct lowering path (the smallest input of each), all in one
    jitted gradient per lowering (one compile each). Every path is kept; repeats of a path at other sizes are not
    (they only lengthen the compile: benchmarks/results/test_suite.md)."""
    every = zoo_conv_shapes()
    assert len(every) > 150  # the zoo's convolutions, not a handful
    smallest = {}
    for shape in sorted(every, key=lambda s: (np.prod(s[0]), s)):
        smallest.setdefault(lowering_path(shape), shape)
    shapes = sorted(smallest.values())
    assert {kind for kind, *_ in smallest} == {"pointwise", "dense", "grouped", "depthwise"}
    rng = np.random.default_rng(0)
    inputs = [(jnp.asarray(rng.standard_normal((1, *x), dtype=np.float32)),
               jnp.asarray(rng.standard_normal(k, dtype=np.float32) / np.sqrt(np.prod(k[:3]))))
              for x, k, _, _, _ in shapes]

    def gradients(lowering):
        def loss(inputs):
            outputs = [layers.conv2d(x, k, stride=s, padding=p, groups=g, lowering=lowering)
                       for (x, k), (_, _, s, p, g) in zip(inputs, shapes, strict=True)]
            return sum(jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)) for y in outputs)

        return jax.jit(jax.grad(loss))(inputs)

    want = gradients("xla")
    for lowering in CPU_LOWERINGS:
        for shape, (want_dx, want_dk), (dx, dk) in zip(shapes, want, gradients(lowering), strict=True):
            np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-4, err_msg=f"{lowering}: d/dx of {shape}")
            np.testing.assert_allclose(dk, want_dk, rtol=1e-4, atol=1e-4, err_msg=f"{lowering}: d/dkernel of {shape}")


def test_registry_picks_per_platform_and_kind(monkeypatch):
    monkeypatch.delenv(layers.LOWERING_ENV_VAR, raising=False)
    best_cpu = "onednn" if onednn.available() else "decomposed"
    for kind in layers.CONV_KINDS:
        assert layers.resolve_lowering("auto", "cpu", kind) == best_cpu
        assert layers.resolve_lowering("auto", "cuda", kind) == layers.resolve_lowering("auto", "tpu", kind) == "xla"
    monkeypatch.setattr(onednn, "available", lambda: False)  # a machine without oneDNN's wheel
    assert layers.resolve_lowering("auto", "cpu", "grouped") == "decomposed"
    with pytest.raises(ValueError, match="conv lowering 'onednn' is not available: .* use 'auto'"):
        layers.resolve_lowering("onednn", "cpu")


def test_explicit_then_context_then_environment_then_registry(monkeypatch):
    monkeypatch.setenv(layers.LOWERING_ENV_VAR, "xla")
    assert layers.resolve_lowering("auto", "cpu") == "xla"
    with layers.conv_lowering("decomposed"):
        assert layers.resolve_lowering("auto", "cpu") == "decomposed"  # the context beats the environment
        assert layers.resolve_lowering("xla", "cpu") == "xla"  # an explicit choice beats both
        with layers.conv_lowering("auto"):  # "auto" falls through to the environment
            assert layers.resolve_lowering("auto", "cpu") == "xla"
    assert layers.resolve_lowering("onednn", "cuda") == "xla"  # oneDNN is the CPU's: elsewhere, XLA's


def test_unknown_lowering_is_named():
    with pytest.raises(ValueError, match="conv lowering 'cudnn' is not one of"):
        layers.resolve_lowering("cudnn")
    with pytest.raises(ValueError, match="conv lowering 'cudnn' is not one of"), layers.conv_lowering("cudnn"):
        pass


def test_the_lowering_follows_where_the_arrays_live(monkeypatch):
    """One traced function: compiled for the CPU it calls oneDNN; exported for a GPU it is XLA's convolution
    (a notebook on a GPU host that runs a checkpoint on the CPU gets the CPU's lowering, and vice versa)."""
    monkeypatch.delenv(layers.LOWERING_ENV_VAR, raising=False)  # "auto", whatever the run forces
    x, kernel, stride, padding, groups = random_case("grouped_block_diagonal")
    step = jax.jit(jax.grad(lambda x, k: jnp.sum(layers.conv2d(x, k, stride=stride, padding=padding,
                                                               groups=groups) ** 2), argnums=(0, 1)))
    cpu_hlo = step.lower(x, kernel).compile().as_text()
    gpu_module = jax.export.export(step, platforms=["cuda"])(x, kernel).mlir_module()
    assert "custom_call" not in gpu_module and gpu_module.count("stablehlo.convolution") == 3  # fwd, dx, dw
    if onednn.available():
        assert cpu_hlo.count('custom_call_target="jaxnets_onednn_conv') == 3
        assert "conditional" not in cpu_hlo  # the platform choice is made when lowering, not at run time


def test_a_pinned_platform_traces_one_lowering_and_computes_the_same(monkeypatch):
    """Where the caller knows the platform (the trainer: its mesh's), no platform choice is traced at all; the
    gradients are those of the platform-dependent function compiled for that platform."""
    monkeypatch.delenv(layers.LOWERING_ENV_VAR, raising=False)
    x, kernel, stride, padding, groups = random_case("grouped_block_diagonal")

    def loss(x, k):
        return jnp.sum(layers.conv2d(x, k, stride=stride, padding=padding, groups=groups) ** 2)

    def grad():  # a new function each time: JAX caches a trace per function, whatever the context
        return jax.grad(loss, argnums=(0, 1))

    chosen_when_lowered = str(jax.make_jaxpr(grad())(x, kernel))
    with layers.conv_lowering("auto", "cpu"):
        pinned = str(jax.make_jaxpr(grad())(x, kernel))
        pinned_grads = jax.jit(grad())(x, kernel)
    assert "platform_index" in chosen_when_lowered and "cond" in chosen_when_lowered
    assert "platform_index" not in pinned and "cond" not in pinned
    for got, expected in zip(pinned_grads, jax.jit(grad())(x, kernel), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * float(jnp.abs(expected).max()))


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




@pytest.mark.skipif(not ONEDNN_WHEEL_EXISTS, reason="oneDNN's wheel exists for Linux x86-64 only")
def test_onednn_extension_is_built_where_its_wheel_exists():
    """`pip install -e .` builds the extension here; a silent fallback would make every CPU run slower."""
    assert onednn.available() and onednn.version() == "3.2.0"


# Runs each forward (input height, width, in channels, out channels, kernel height, width, padding, groups) through
# oneDNN and through XLA, and prints the largest difference.
FORWARDS_AGAINST_XLA = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jaxnets.ops import onednn
worst = 0.0
for h, w, cin, cout, kh, kw, pad, groups in json.loads(sys.argv[1]):
    rng = np.random.default_rng(h * cin + cout + kh + groups)
    x = jnp.asarray(rng.standard_normal((2, h, w, cin), dtype=np.float32))
    k = jnp.asarray(rng.standard_normal((kh, kw, cin // groups, cout), dtype=np.float32) / np.sqrt(kh * kw * cin))
    got = jax.jit(lambda x, k: onednn.conv2d(x, k, padding=pad, groups=groups))(x, k)
    want = jax.lax.conv_general_dilated(x, k, (1, 1), [(pad, pad), (pad, pad)], feature_group_count=groups,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    worst = max(worst, float(jnp.max(jnp.abs(got - want))))
print("worst", worst)
"""


# oneDNN 3.2 has no direct AVX2 forward kernel for 4 channels per group: all but the last run as their transpose's
# backward-data (the last one's padding is as wide as its kernel: its transpose would need a negative one).
AVX2_GROUPED_FORWARDS = [(9, 9, 32, 32, 3, 3, 1, 8), (7, 10, 16, 32, 3, 3, 1, 4), (9, 9, 32, 32, 5, 5, 2, 8),
                         (8, 8, 8, 16, 3, 3, 0, 4), (6, 6, 8, 8, 1, 3, 0, 4), (6, 6, 8, 8, 3, 1, 1, 4)]


@pytest.mark.skipif(not ONEDNN_WHEEL_EXISTS, reason="oneDNN's wheel exists for Linux x86-64 only")
def test_onednn_forward_without_a_direct_kernel_runs_as_its_transposes_input_gradient():
    """On AVX2 oneDNN 3.2 computes a grouped forward with few channels per group as an im2col + gemm (ResNeXt's
    first stage: 2.6x slower than PyTorch): jaxnets runs it as the input gradient of the transposed convolution,
    the kernel flipped in space and its channels swapped per group. Checked in a process whose oneDNN is held to
    AVX2, so that the path runs on AVX-512 machines too (their forward has a direct kernel)."""
    executed, worst = onednn_run_logged(FORWARDS_AGAINST_XLA, AVX2_GROUPED_FORWARDS, isa="AVX2")
    convolutions = [line for line in executed if ",convolution," in line]
    kinds = [line.split(",")[5] for line in convolutions]
    assert kinds == ["backward_data"] * 5 + ["forward_training"], convolutions
    assert not any("gemm" in line for line in convolutions[:5]), convolutions
    assert worst < 1e-4, f"transposed forward differs from XLA's by {worst}"


# Output channels no kernel block divides (so that the blocks' padding is exercised): dense 3x3 and grouped (a 1x1
# convolution of few rows is a matmul, with no kernel layout of its own: below).
PADDED_BLOCK_FORWARDS = [(5, 5, 32, 200, 3, 3, 1, 1), (2, 2, 1024, 1000, 3, 3, 1, 8), (3, 3, 256, 480, 3, 3, 1, 4)]

# A oneDNN kernel layout that blocks only the output channels (`a` of [out, in, h, w]; `b` of [groups, out/g, ...])
# in blocks of at least 32 float32 values: csrc/onednn_conv.cc copies HWIO kernels into it without oneDNN's reorder.
OUTPUT_CHANNEL_BLOCKS = re.compile(r"^(?:[A-Z][a-z]+|a[A-Z][a-z]+)(\d+)([ab])$")


def copied_by_blocks(layout: str) -> bool:
    match = OUTPUT_CHANNEL_BLOCKS.match(layout)
    return bool(match) and int(match[1]) >= 32 and (match[2] == "a") == (not layout.startswith("a"))


@pytest.mark.skipif(not ONEDNN_WHEEL_EXISTS, reason="oneDNN's wheel exists for Linux x86-64 only")
@pytest.mark.parametrize("isa", ["native", "AVX2"])
def test_onednn_copies_kernels_into_output_channel_blocks_instead_of_reordering(isa):
    """Where oneDNN wants a forward kernel blocked only along its output channels in blocks of >= 128 bytes
    (AVX-512's brgemm forwards; AVX2's grouped brgemm), the HWIO kernel is copied run by run, its padding
    zeroed: the results equal XLA's, and oneDNN runs no reorder into such a layout (its own moved ResNeXt-50's
    kernels 2-3x slower: benchmarks/README.md). At least one of the convolutions takes that path on either ISA."""
    executed, worst = onednn_run_logged(FORWARDS_AGAINST_XLA, PADDED_BLOCK_FORWARDS,
                                        isa=None if isa == "native" else isa)
    kernel_layouts = [re.search(r"wei_f32:\w*:blocked:(\w+):", line)[1]
                      for line in executed if ",convolution," in line]
    reordered_into = [re.search(r"dst_f32:\w*:blocked:(\w+):", line)[1] for line in executed if ",reorder," in line]
    assert len(kernel_layouts) == 3, executed
    assert any(copied_by_blocks(layout) for layout in kernel_layouts), kernel_layouts
    assert not [layout for layout in reordered_into if copied_by_blocks(layout)], reordered_into
    assert worst < 1e-4, f"a forward with a copied kernel differs from XLA's by {worst}"


# The start of a script over 1x1 convolutions (batch, height, width, in channels, out channels; JSON in argv[1]):
# `pointwise_cases()` yields each one's random input, kernel and output gradient, and `xla` is XLA's convolution.
POINTWISE_CASES = """
import json, math, sys
import jax, jax.numpy as jnp, numpy as np
from jaxnets.ops import onednn
def pointwise_cases():
    for n, h, w, cin, cout in json.loads(sys.argv[1]):
        rng = np.random.default_rng(h * cin + cout)
        yield (jnp.asarray(rng.standard_normal((n, h, w, cin), dtype=np.float32)),
               jnp.asarray(rng.standard_normal((1, 1, cin, cout), dtype=np.float32) / np.sqrt(cin)),
               jnp.asarray(rng.standard_normal((n, h, w, cout), dtype=np.float32)))
xla = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
"""

# Runs each 1x1 convolution forward and backward through oneDNN and through XLA, and prints the largest difference of
# the output and of both gradients.
POINTWISE_AGAINST_XLA = POINTWISE_CASES + """
worst = 0.0
for x, k, dy in pointwise_cases():
    got, want = (jax.jit(lambda x, k, dy: (lambda y, pull: (y, *pull(dy)))(*jax.vjp(f, x, k)))(x, k, dy)
                 for f in (onednn.conv2d, xla))
    worst = max(worst, *(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(got, want)))
print("worst", worst)
"""


def expected_matmul_max_rows(isa: str) -> int:
    """The default limit csrc/onednn_conv.cc should pick, read independently of oneDNN: 2048 rows where oneDNN runs
    AVX-512 kernels (native, on a CPU with AVX-512 F, BW, VL and DQ), else 512."""
    if isa == "AVX2":
        return 512
    flags = set(re.search(r"^flags\s*:(.*)$", pathlib.Path("/proc/cpuinfo").read_text(), re.M)[1].split())
    return 2048 if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags else 512


@pytest.mark.skipif(not ONEDNN_WHEEL_EXISTS, reason="oneDNN's wheel exists for Linux x86-64 only")
@pytest.mark.parametrize("isa", ["native", "AVX2"])
def test_onednn_computes_a_1x1_convolution_of_few_rows_as_matmuls_on_its_buffers_as_they_lie(isa):
    """A 1x1 convolution (stride 1, unpadded) of up to 2048 rows (AVX-512) or 512 (AVX2) runs its forward, input
    gradient and kernel gradient as oneDNN matmuls over the NHWC and HWIO buffers, the kernel read in place: no
    convolution, no reorder (ResNeXt-50's train step at 64 px: 1.20x faster, benchmarks/results/pointwise_ab.md). Above
    that many rows it stays a convolution, where oneDNN 3.2's convolution kernels are as fast or a few percent faster.
    Values and gradients equal XLA's."""
    limit = expected_matmul_max_rows(isa)
    # (batch, height, width, in, out): 32 rows and the limit's rows as matmuls, then 64 rows over it as a convolution
    matmuls, convolution = [(2, 4, 4, 96, 40), (limit // 256, 16, 16, 64, 1000)], [(1, limit // 32 + 2, 32, 16, 24)]
    executed, worst = onednn_run_logged(POINTWISE_AGAINST_XLA, matmuls + convolution,
                                        isa=None if isa == "native" else isa)
    kinds = [line.split(",")[3] for line in executed]
    assert kinds[:6] == ["matmul"] * 6, executed  # forward, input gradient, kernel gradient of each: nothing else
    in_place = re.compile(r"src_f32::blocked:(ab|ba)::f0 wei_f32::blocked:(ab|ba)::f0 dst_f32::blocked:ab::f0")
    assert all(in_place.search(line) for line in executed[:6]), executed
    # Over the limit, the kernel gradient is oneDNN's sgemm over chunks of rows where oneDNN runs AVX2 kernels (the
    # same CPUs as the 512-row limit): ONEDNN_VERBOSE logs those as gemm_api, not as a convolution.
    chunked = limit == 512
    assert "matmul" not in kinds[6:] and kinds[6:].count("convolution") == (2 if chunked else 3), executed
    assert any("backward_weights" in line for line in executed[6:]) != chunked, executed
    assert worst < 1e-5, f"a 1x1 convolution by matmul differs from XLA's by {worst} of the largest value"


# Runs each 1x1 convolution's kernel gradient with the chunked sgemms off, then twice on, in one compiled program, and
# prints the largest difference of each from XLA's gradient (infinite where the two chunked calls differ in a bit).
CHUNKED_AGAINST_XLA = POINTWISE_CASES + """
assert onednn.set_matmul_max_rows(64) == onednn.default_matmul_max_rows()
worst = 0.0
for x, k, dy in pointwise_cases():
    gradient = lambda conv: jax.jit(lambda x, k, dy: jax.vjp(conv, x, k)[1](dy)[1])
    want, by_onednn = gradient(xla)(x, k, dy), gradient(onednn.conv2d)
    onednn.set_chunked_kernel_gradients(False)
    convolution = jax.block_until_ready(by_onednn(x, k, dy))  # (the setting is read when the call runs)
    onednn.set_chunked_kernel_gradients(True)
    chunked, again = by_onednn(x, k, dy), by_onednn(x, k, dy)
    worst = max(worst, *(float(jnp.max(jnp.abs(a - want)) / jnp.max(jnp.abs(want))) for a in (convolution, chunked)))
    worst = worst if bool(jnp.all(chunked == again)) else math.inf
print("worst", worst)
"""


@pytest.mark.skipif(not ONEDNN_WHEEL_EXISTS, reason="oneDNN's wheel exists for Linux x86-64 only")
@pytest.mark.parametrize("threads", [1, 3, 16])
def test_onednn_chunked_kernel_gradients_equal_xla_and_switch_compiled_programs(threads, monkeypatch):
    """`onednn.set_chunked_kernel_gradients` switches a compiled program's 1x1 kernel gradients (over the matmuls' row
    limit) between oneDNN's convolution and sgemms over chunks of rows, summed per run of rows, AVX2's default
    (benchmarks/results/kernel_gradient_ab_*.md). Both equal XLA's gradient, and the chunks give the same bits again:
    on one thread, on 3 (runs of rows that fill no whole chunk, a team larger than the work needs), on 16 (4 runs of
    rows, the output's columns split among the threads as well)."""
    # (batch, height, width, in, out), over the 64 rows the script lets the matmuls take: 3,465 rows (one run of 3
    # chunks of 1,024 and a part; 3 runs of 1,155 rows; 4 of 866-867); 1,600 rows x 200 columns (16 threads: 4 runs of
    # 400 rows x 3 blocks of 66-67 columns, 4 threads idle until the sums are added); 455 rows (1 run); 65 rows
    shapes = [(3, 35, 33, 24, 40), (1, 40, 40, 8, 200), (1, 65, 7, 16, 8), (1, 13, 5, 8, 1)]
    monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
    executed, worst = onednn_run_logged(CHUNKED_AGAINST_XLA, shapes)
    # oneDNN's convolution kernel gradient once a shape, with the chunks off (their sgemms log gemm_api lines)
    assert sum("backward_weights" in line for line in executed) == len(shapes), executed
    assert worst < 1e-5, f"a 1x1 kernel gradient differs from XLA's by {worst} of the largest value (inf: not alike)"


# Runs one 1x1 convolution with the matmuls turned off, then on again, in the same compiled program.
MATMULS_OFF_THEN_ON = """
import jax, jax.numpy as jnp, numpy as np
from jaxnets.ops import onednn
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((2, 4, 4, 8), np.float32))
k = jnp.asarray(rng.standard_normal((1, 1, 8, 16), np.float32))
conv = jax.jit(onednn.conv2d)
default = onednn.set_matmul_max_rows(0)
off = jax.block_until_ready(conv(x, k))  # (the limit is read when the call runs)
assert onednn.set_matmul_max_rows(default) == 0 and default == onednn.default_matmul_max_rows(), default
print("worst", float(jnp.max(jnp.abs(conv(x, k) - off))))
"""


@pytest.mark.skipif(not ONEDNN_WHEEL_EXISTS, reason="oneDNN's wheel exists for Linux x86-64 only")
def test_set_matmul_max_rows_switches_compiled_programs_and_refuses_a_negative_limit():
    """`onednn.set_matmul_max_rows(0)` turns the matmuls off for the calls after it, already compiled programs
    included (benchmarks/pointwise_ab.py relies on it), and returns the previous limit; the results agree."""
    executed, worst = onednn_run_logged(MATMULS_OFF_THEN_ON, [])
    kinds = [line.split(",")[3] for line in executed if ",reorder," not in line]
    assert kinds == ["convolution", "matmul"], executed
    assert worst < 1e-5
    with pytest.raises(ValueError, match=r"set_matmul_max_rows: rows must be >= 0, got -1"):
        onednn.set_matmul_max_rows(-1)


POOLS = [(3, 2, 1, 9), (3, 2, 1, 8), (3, 1, 1, 5), (2, 2, 0, 6)]  # (size, stride, padding, input height)


@pytest.mark.parametrize(("size", "stride", "padding", "height"), POOLS)
def test_pools_match_flax(size, stride, padding, height):
    """Strided-slice pools = Flax's reduce-window pools, values and (tie-free input) gradients."""
    from flax import linen as nn

    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, height, height, 3), dtype=np.float32))
    pads = ((padding, padding), (padding, padding))
    pairs = {
        "max": (functools.partial(layers.max_pool, size=size, stride=stride, padding=padding),
                lambda x: nn.max_pool(x, (size, size), (stride, stride), pads)),
        "avg": (functools.partial(layers.avg_pool, size=size, stride=stride, padding=padding),
                lambda x: nn.avg_pool(x, (size, size), (stride, stride), pads, count_include_pad=False)),
    }
    for kind, (ours, flax_pool) in pairs.items():
        np.testing.assert_allclose(ours(x), flax_pool(x), rtol=1e-6, atol=1e-6, err_msg=kind)
        grad = [jax.grad(lambda x, f=f: jnp.sum(f(x) * jnp.cos(f(x))))(x) for f in (ours, flax_pool)]
        np.testing.assert_allclose(grad[0], grad[1], rtol=1e-5, atol=1e-6, err_msg=f"{kind} gradient")


@pytest.mark.parametrize(("size", "stride", "padding", "height"), [*POOLS, (12, 4, 6, 13)])  # 144 taps: past int8
def test_max_pool_gradient_goes_to_the_first_maximum_as_in_pytorch(size, stride, padding, height):
    """With ties (a ReLU's zeros, repeated values) each window's gradient goes to the cell PyTorch's CPU pool picks,
    and a NaN is the maximum of every window it is in."""
    import torch

    rng = np.random.default_rng(1)
    x = np.maximum(np.round(rng.standard_normal((2, height, height, 3), dtype=np.float32)), 0)  # ties everywhere
    x[0, 1, 1, 0] = np.nan
    pooled, vjp = jax.vjp(functools.partial(layers.max_pool, size=size, stride=stride, padding=padding), jnp.asarray(x))
    gradient = rng.standard_normal(pooled.shape, dtype=np.float32)
    (ours,) = vjp(jnp.asarray(gradient))

    x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
    pooled_torch = torch.nn.functional.max_pool2d(x_torch, size, stride, padding)
    pooled_torch.backward(torch.from_numpy(gradient).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(pooled, pooled_torch.detach().permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(ours, x_torch.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not ONEDNN_WHEEL_EXISTS, reason="oneDNN's wheel exists for Linux x86-64 only")
def test_onednn_refuses_a_kernel_that_does_not_fit_and_falls_back_for_dtypes_it_cannot_compute(monkeypatch):
    x, kernel, stride, padding, groups = random_case("grouped_block_diagonal")
    with pytest.raises(ValueError, match=r"input \(2, 9, 9, 32\) and kernel \(3, 3, 4, 32\) \(HWIO\) do not fit"):
        onednn.conv2d(x, kernel, padding=1, groups=4)  # 8 groups' kernel, told 4
    onednn.supported_dtypes.cache_clear()
    monkeypatch.setattr(onednn, "supported_dtypes", lambda: (jnp.dtype(jnp.float32),))  # a CPU without AVX-512
    bf16 = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    (_, got), _ = loss_and_grads("onednn", *bf16, stride, padding, groups)
    (_, want), _ = loss_and_grads("decomposed", *bf16, stride, padding, groups)
    np.testing.assert_array_equal(got, want)  # the "decomposed" formulation, not an error at run time
