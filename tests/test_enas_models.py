"""ENAS macro networks: released parameter counts, op selection, one compile for every arc, training.

Tiny configurations (8 filters, 8x8 inputs; 6 layers fixed, 4 layers search) run the same code paths as
the released ones; the released sizes are checked with `jax.eval_shape`, so nothing big is computed.
A search step compiles every op of every layer, forward and backward; on XLA:CPU the decomposed
depthwise lowering doubles that compile time, so the tests trace with XLA's native convolutions
(`layers.conv_lowering("xla")`), and two tests check that the fixed and the search networks compute the
same with the default lowering.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax.traverse_util import flatten_dict

from jaxnets.models import layers
from jaxnets.models.enas import (
    PUBLISHED_FINAL_ARC,
    ENASMacroChild,
    ENASMacroSearch,
    arc_length,
    parse_arc,
    random_arc,
)
from jaxnets.models.enas.fixed import FixedLayer
from jaxnets.models.enas.ops import he_normal, pool_layers
from jaxnets.models.enas.shared import SharedBranch, SharedLayer, switched_ops
from jaxnets.models.normalization import frozen_statistics
from jaxnets.models.registry import create_model

LAYERS, SEARCH_LAYERS, FILTERS, SIZE, BATCH = 6, 4, 8, 8, 4
KEY = jax.random.key(0, impl="rbg")  # XLA:CPU compiles RBG initialisers much faster than threefry ones
MODES = [True, False]  # whole_channels

# 6 layers, all six ops (pools at the pool layers 1 and 3 too), skips to the stem and to earlier layers.
FIXED_ARC_TEXT = "4  1 1  5 0 1  3 1 0 1  2 0 0 0 0  0 1 1 0 1 0"


@pytest.fixture(autouse=True)
def xla_convolutions():
    with layers.conv_lowering("xla"):  # (at trace time: every test traces inside it)
        yield


def count_params(model, x):
    shapes = jax.eval_shape(lambda: model.init(KEY, x))
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"]))


def images(seed=0, n=BATCH):
    return jax.random.normal(jax.random.key(seed), (n, SIZE, SIZE, 3))


def fixed_arc(whole_channels):
    if whole_channels:
        return parse_arc(FIXED_ARC_TEXT, LAYERS, 6)
    # Layer k runs branch k % 6 (channels [1, 5)), layer 0 also branch 3 (channels [0, 2)); the others
    # have count 0 and are not built (the fixed net only uses the counts). Skips as in FIXED_ARC_TEXT.
    skips = parse_arc(FIXED_ARC_TEXT, LAYERS, 6).layers
    heads = [[0, 0] * 6 for _ in range(LAYERS)]
    for k, head in enumerate(heads):
        head[2 * k : 2 * k + 2] = [1, 4]
    heads[0][6:8] = [0, 2]
    text = " ".join(" ".join(map(str, head + list(layer.skips))) for head, layer in zip(heads, skips, strict=True))
    return parse_arc(text, LAYERS, 6, whole_channels=False)


def tiny_model(kind, whole_channels, **kw):
    if kind == "fixed":
        kw = dict(arc=fixed_arc(whole_channels), num_branches=6) | kw
        return ENASMacroChild(num_layers=LAYERS, num_filters=FILTERS, whole_channels=whole_channels, **kw)
    return ENASMacroSearch(num_layers=SEARCH_LAYERS, num_filters=FILTERS, whole_channels=whole_channels, **kw)


@functools.cache
def initial_variables(kind, whole_channels):
    """tiny_model(kind, whole_channels).init(KEY, images()), shared by the tests: initialising compiles the random
    draws of every op of every layer (~7 s for the search network)."""
    return tiny_model(kind, whole_channels).init(KEY, images())


def sample_arc(seed, whole_channels):
    return jnp.asarray(random_arc(seed, SEARCH_LAYERS, 6, whole_channels, num_filters=FILTERS))


def leaves_differ(a, b):
    return [k for k, v in flatten_dict(a).items() if not np.array_equal(v, flatten_dict(b)[k])]


@functools.cache
def search_step(whole_channels):
    """One jitted SGD step of the search network, shared by the tests (so its compiles are counted)."""
    model = tiny_model("search", whole_channels)
    labels = jnp.arange(BATCH) % 10
    traces = []

    @jax.jit
    def step(variables, x, arc, key):
        traces.append(1)  # runs once per trace, i.e. per compilation

        def loss_fn(params):
            logits, updates = model.apply(
                {**variables, "params": params}, x, arc, train=True, mutable=["batch_stats"], rngs={"dropout": key}
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        params = jax.tree.map(lambda p, g: p - 0.1 * g, variables["params"], grads)
        return {"params": params, "batch_stats": batch_stats}, loss

    return model, step, traces


# --- released configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(("separable_as_full_conv", "expected"), [(True, 42_559_392), (False, 30_947_424)])
def test_released_final_parameter_count(separable_as_full_conv, expected):
    model = create_model("enas_macro", separable_as_full_conv=separable_as_full_conv)
    assert (model.num_layers, model.num_filters, model.num_branches, model.num_classes) == (24, 96, 4, 10)
    assert model.keep_prob == 0.5 and model.arc == parse_arc(PUBLISHED_FINAL_ARC, 24, 4)
    # Official (ops 1/3 as full convs): ~42.6M; true separable convs: ~31M. See docs/enas.md.
    assert count_params(model, jnp.zeros((1, 32, 32, 3))) == expected


def test_released_search_defaults():
    model = create_model("enas_macro_shared")
    assert (model.num_layers, model.num_filters, model.num_branches, model.keep_prob) == (12, 36, 6, 0.9)
    assert count_params(model, jnp.zeros((1, 32, 32, 3))) == 697_860


def test_registry_overrides_and_arc_text():
    model = create_model("enas_macro", num_classes=100, arc=PUBLISHED_FINAL_ARC, dtype=jnp.bfloat16)
    assert model.num_classes == 100 and model.dtype == jnp.bfloat16
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    assert shapes["params"]["head"]["fc"]["kernel"].shape == (384, 100)  # 96 filters doubled twice
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))  # params and BN stats stay float32
    search = create_model("enas_macro_shared", num_layers=3, num_filters=4, num_branches=4, whole_channels=False)
    assert (search.num_layers, search.num_filters, search.num_branches, search.whole_channels) == (3, 4, 4, False)


# --- every model: init, forward, one SGD step ------------------------------------------------------------


@pytest.mark.parametrize("whole_channels", MODES)
def test_fixed_model_forward_and_sgd_step(whole_channels):
    model = tiny_model("fixed", whole_channels)
    x = images()
    variables = initial_variables("fixed", whole_channels)
    assert "skip_conv" not in variables["params"]["layer_0"] and "skip_conv" in variables["params"]["layer_5"]

    logits, unchanged = jax.jit(functools.partial(model.apply, train=False, mutable=["batch_stats"]))(variables, x)
    assert logits.shape == (BATCH, 10) and logits.dtype == jnp.float32 and np.isfinite(logits).all()
    np.testing.assert_allclose(model.apply(variables, x, train=False), logits, rtol=1e-5, atol=1e-5)
    assert not leaves_differ(unchanged["batch_stats"], variables["batch_stats"])  # eval mode: no update

    labels = jnp.arange(BATCH) % 10

    @jax.jit
    def step(variables, key):
        def loss_fn(params):
            logits, updates = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        return jax.tree.map(lambda p, g: p - 0.1 * g, variables["params"], grads), batch_stats, loss

    params, batch_stats, loss = step(variables, jax.random.key(1))
    assert np.isfinite(loss)
    assert leaves_differ(params, variables["params"])
    assert set(leaves_differ(batch_stats, variables["batch_stats"])) == set(flatten_dict(batch_stats))


@pytest.mark.parametrize("whole_channels", MODES)
def test_search_model_forward_and_sgd_step(whole_channels):
    model, step, _ = search_step(whole_channels)
    x, arc = images(), sample_arc(1, whole_channels)
    variables = initial_variables("search", whole_channels)  # initialised with no arc: the default one
    for b in range(6):  # every op's weights exist, whatever arc init saw
        assert f"branch_{b}" in variables["params"][f"layer_{SEARCH_LAYERS - 1}"]

    forward = jax.jit(functools.partial(model.apply, train=False, mutable=["batch_stats"]))
    logits, unchanged = forward(variables, x, arc)
    assert logits.shape == (BATCH, 10) and logits.dtype == jnp.float32 and np.isfinite(logits).all()
    np.testing.assert_allclose(model.apply(variables, x, arc, train=False), logits, rtol=1e-5, atol=1e-5)
    assert not leaves_differ(unchanged["batch_stats"], variables["batch_stats"])  # eval mode: no update

    new, loss = step(variables, x, arc, jax.random.key(1))
    assert np.isfinite(loss)
    assert leaves_differ(new["params"], variables["params"])
    changed = leaves_differ(new["batch_stats"], variables["batch_stats"])
    assert ("stem", "bn", "mean") in changed
    if whole_channels:  # only the ops the arc picked ran (and updated their statistics)
        op = int(arc[0])
        assert ("layer_0", f"branch_{op}", "inp_conv", "bn", "mean") in changed
        assert not [k for k in changed if k[0] == "layer_0" and k[1] != f"branch_{op}"]


@pytest.mark.parametrize("whole_channels", MODES)
def test_search_trains_100_arcs_with_one_compilation(whole_channels):
    model, step, traces = search_step(whole_channels)
    x = images()
    variables = initial_variables("search", whole_channels)
    arcs = [sample_arc(100 + i, whole_channels) for i in range(100)]
    assert len({tuple(np.asarray(a)) for a in arcs}) == 100
    losses = []
    for i, arc in enumerate(arcs):
        variables, loss = step(variables, x, arc, jax.random.key(i))  # arc is traced: no recompilation
        losses.append(loss)
    assert np.isfinite(np.asarray(losses)).all()
    assert len(traces) == 1 and step._cache_size() == 1


def test_search_default_lowering_matches_xla():
    x, arc = images(), sample_arc(2, True)
    model = tiny_model("search", True)
    variables = initial_variables("search", True)
    want = jax.jit(functools.partial(model.apply, train=False))(variables, x, arc)
    with layers.conv_lowering("auto"):
        got = jax.jit(functools.partial(model.apply, train=False))(variables, x, arc)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_fixed_default_lowering_matches_xla_forward_and_backward():
    """The fixed whole-channel child (all six ops, skips, factorized reductions) under the default lowering."""
    model, x = tiny_model("fixed", True), images()
    variables = initial_variables("fixed", True)

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.key(1)})
        return jnp.sum(logits * jnp.sin(jnp.arange(logits.size, dtype=logits.dtype)).reshape(logits.shape))

    want_loss, want_grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    with layers.conv_lowering("auto"):
        got_loss, got_grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-4, atol=1e-4)
    for path, want in flatten_dict(want_grads).items():
        np.testing.assert_allclose(flatten_dict(got_grads)[path], want, rtol=1e-3, atol=1e-4, err_msg=str(path))


# --- the op is really selected -----------------------------------------------------------------------------


def test_op_id_changes_the_output():
    model = tiny_model("search", True)
    x = images()
    variables = initial_variables("search", True)
    forward = jax.jit(functools.partial(model.apply, train=False))
    base = np.asarray(random_arc(3, SEARCH_LAYERS, 6))
    outputs = []
    for op in range(6):  # the same params, only layer 2's op changes
        arc = base.copy()
        arc[arc_length(2)] = op
        outputs.append(np.asarray(forward(variables, x, arc)))
    for a in range(6):
        for b in range(a):
            assert not np.allclose(outputs[a], outputs[b], atol=1e-4), f"ops {a} and {b} give the same logits"


# The switch over cached pure branches, and (while a frozen-statistics pattern is set, even one matching nothing)
# flax's `nn.switch` over the bound branches.
@pytest.mark.parametrize("train, frozen", [(False, None), (True, None), (True, "(?!)")])
def test_switch_matches_running_the_op_directly(train, frozen):
    layer = SharedLayer(layer_id=0, num_branches=6, features=FILTERS)
    x = images()[..., :1] * jnp.ones((1, 1, 1, FILTERS))  # [N, H, W, C]
    x = x * jnp.arange(1, FILTERS + 1, dtype=x.dtype).reshape(1, 1, 1, FILTERS)
    variables = layer.init(KEY, [x], jnp.zeros((1,), jnp.int32), False)
    with frozen_statistics(frozen):  # at trace time
        run = jax.jit(lambda v, op: layer.apply(v, [x], op.reshape(1), train, mutable=["batch_stats"])).trace(
            variables, jnp.int32(0)).lower().compile()
    for op in range(6):
        got, got_stats = run(variables, jnp.int32(op))
        sub = {c: variables[c][f"branch_{op}"] for c in variables if f"branch_{op}" in variables[c]}
        want, want_stats = SharedBranch(op, FILTERS).apply(sub, x, train, mutable=["batch_stats"])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        for b in range(6):  # the chosen op's statistics update (in train mode), nobody else's
            expected = want_stats["batch_stats"] if b == op else variables["batch_stats"][f"branch_{b}"]
            got_b = flatten_dict(got_stats["batch_stats"][f"branch_{b}"])
            for path, value in flatten_dict(expected).items():
                np.testing.assert_allclose(got_b[path], value, atol=1e-6)


def test_search_traces_each_op_once_per_resolution():
    """The layers of one resolution share each op's trace and its pullback's (`shared.switched_ops`).

    9 layers, pools after layers 2 and 5: three resolutions of three layers. Traced only (abstract variables).
    """
    model = ENASMacroSearch(num_layers=9, num_filters=FILTERS)
    x, arc = images(), jnp.asarray(random_arc(4, 9, 6))
    variables = jax.eval_shape(lambda: model.init(KEY, x))
    assert pool_layers(9) == (2, 5)

    def loss(params, batch_stats):
        return model.apply({"params": params, "batch_stats": batch_stats}, x, arc, train=True,
                           mutable=["batch_stats"], rngs={"dropout": KEY})[0].sum()

    calls = []

    def count(next_fun, args, kwargs, context):
        if isinstance(context.module, SharedBranch) and context.method_name == "__call__":
            calls.append(context.module.op)
        return next_fun(*args, **kwargs)

    switched_ops.cache_clear()  # fresh function objects: nothing traced by earlier tests is reused
    with nn.intercept_methods(count):
        jax.jit(jax.value_and_grad(loss)).trace(variables["params"], variables["batch_stats"])
    assert sorted(calls) == sorted(list(range(6)) * 3 * 2)  # per resolution: the op and its pullback (nn.switch: 9)


def _used_inputs(layer, variables, prev, *spec):
    grads = jax.jit(jax.grad(lambda prev, *spec: layer.apply(variables, prev, *spec, False).sum()))(prev, *spec)
    return [bool(jnp.abs(g).sum() > 0) for g in grads]


def test_skip_bit_zero_is_the_stem():
    prev = [images(seed)[..., :1] * jnp.ones((1, 1, 1, FILTERS)) for seed in range(3)]  # [stem, out_0, out_1]
    # Layer 2's input is out_1, always used; skip bit i adds prev[i] (bit 0: the stem).
    for bits in [(1, 0), (0, 1)]:
        spec = parse_arc(f"0  0 0  0 {bits[0]} {bits[1]}", 3, 6).layers[2]
        layer = FixedLayer(2, spec, FILTERS)
        assert _used_inputs(layer, layer.init(KEY, prev, False), prev) == [*map(bool, bits), True]
    layer = SharedLayer(2, 6, FILTERS)
    variables = layer.init(KEY, prev, jnp.zeros((3,), jnp.int32), False)
    for bits in [(1, 0), (0, 1), (0, 0), (1, 1)]:  # traced 0/1 masks, one compile
        assert _used_inputs(layer, variables, prev, jnp.asarray((0, *bits))) == [*map(bool, bits), True]


# --- validation, dtype, init ---------------------------------------------------------------------------------


def test_bad_arcs_fail_before_tracing():
    x = images()
    with pytest.raises(ValueError, match="arc has num_layers=24 but the model has num_layers=6"):
        ENASMacroChild(num_layers=6, num_filters=FILTERS).init(KEY, x)
    search = tiny_model("search", True)
    with pytest.raises(ValueError, match=r"arc has shape \(9,\), expected \(10,\)"):
        search.init(KEY, x, jnp.zeros((9,), jnp.int32))
    bad = np.zeros(10, np.int32)
    bad[arc_length(3)] = 6
    with pytest.raises(ValueError, match="layer 3, position 0 .*op id 6 is out of range"):
        search.init(KEY, x, bad)
    flat = random_arc(0, SEARCH_LAYERS, 6, whole_channels=False, num_filters=FILTERS)
    flat[0], flat[1] = 5, 4  # channels [5, 9) of 8
    with pytest.raises(ValueError, match=r"layer 0, position 0 .*branch 0 takes channels \[5, 9\)"):
        tiny_model("search", False).init(KEY, x, flat)
    with pytest.raises(ValueError, match="keep_prob"):
        tiny_model("search", True, keep_prob=0.0).init(KEY, x)


def test_bfloat16_compute_keeps_float32_params():
    model = tiny_model("search", True, dtype=jnp.bfloat16)
    x = images()
    variables = jax.eval_shape(lambda: model.init(KEY, x))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    logits = jax.eval_shape(lambda v: model.apply(v, x, sample_arc(0, True), train=False), variables)
    assert logits.dtype == jnp.float32 and logits.shape == (BATCH, 10)


def test_he_normal_uses_tf_fan_in():
    key = jax.random.key(0)
    truncation = 0.87962566  # std of a standard normal truncated to [-2, 2]
    dense = he_normal(key, (3, 3, 64, 128))
    np.testing.assert_allclose(dense.std(), np.sqrt(2 / (9 * 64)) * truncation, rtol=0.03)
    depthwise = he_normal(key, (5, 5, 1, 256), depthwise=True)  # TF's fan_in: k*k*C, not k*k
    np.testing.assert_allclose(depthwise.std(), np.sqrt(2 / (25 * 256)) * truncation, rtol=0.03)
    # As a module's initializer (what the ENAS networks pass it as): a dense kernel's fan-in is its input width.
    kernel = nn.Dense(256, kernel_init=he_normal).init(key, jnp.zeros((1, 512)))["params"]["kernel"]
    np.testing.assert_allclose(kernel.std(), np.sqrt(2 / 512) * truncation, rtol=0.03)
