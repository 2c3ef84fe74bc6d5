"""The ENAS controller: valid arcs, and log-probabilities equal to an independent float64 NumPy scoring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets.models.enas import arc_length, format_arc, parse_arc
from jaxnets.models.enas.arc import check_channels
from jaxnets.nas import MacroController

LAYERS, FILTERS = 6, 8


def numpy_score(params, arc, *, num_layers, num_branches, whole_channels, num_filters, tanh_constant,
                temperature, skip_target):
    """log p(arc), the entropy and the skip KL, written out from the reference description in float64."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h_size = p["g_emb"].shape[1]
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))

    def lstm(x, c, h):
        z = np.concatenate([x, h], axis=1) @ p["w_lstm"]
        i, f, o, g = (z[:, j * h_size:(j + 1) * h_size] for j in range(4))
        c = sigmoid(i) * np.tanh(g) + sigmoid(f) * c
        return c, sigmoid(o) * np.tanh(c)

    def shaped(logits):
        logits = logits / temperature if temperature else logits
        return tanh_constant * np.tanh(logits) if tanh_constant else logits

    def log_softmax(logits):
        finite = np.where(np.isfinite(logits), logits, -np.inf)
        m = np.max(finite, axis=-1, keepdims=True)
        return finite - m - np.log(np.sum(np.exp(finite - m), axis=-1, keepdims=True))

    log_prob = entropy = penalty = 0.0

    def score(logits, choice):
        nonlocal log_prob, entropy
        lp = log_softmax(logits)
        log_prob += float(np.sum(np.take_along_axis(lp, np.asarray(choice).reshape(-1, 1), axis=-1)))
        finite = np.where(np.isfinite(lp), lp, 0.0)  # a masked choice (p = 0) adds nothing
        entropy += float(np.sum(-np.exp(lp) * finite))

    values = list(map(int, arc))
    c = h = np.zeros((1, h_size))
    x, anchors, anchors_w_1 = p["g_emb"], [], []
    for k in range(num_layers):
        if whole_channels:
            c, h = lstm(x, c, h)
            op = values.pop(0)
            score(shaped(h @ p["w_soft"]), [op])
            x = p["w_emb"][op][None]
        else:
            for b in range(num_branches):
                c, h = lstm(x, c, h)
                start, count = values.pop(0), values.pop(0)
                score(shaped(h @ p["w_start_soft"][b]), [start])
                c, h = lstm(p["w_start_emb"][b][start][None], c, h)
                allowed = np.arange(1, num_filters + 1) <= num_filters - start
                score(np.where(allowed, shaped(h @ p["w_count_soft"][b]), -np.inf), [count - 1])
                x = p["w_count_emb"][b][count - 1][None]
        c, h = lstm(x, c, h)
        if k > 0:
            skips = np.array([values.pop(0) for _ in range(k)])
            q = np.tanh(np.concatenate(anchors_w_1) + h @ p["w_attn_2"]) @ p["v_attn"]
            logits = shaped(np.concatenate([-q, q], axis=1))
            score(logits, skips)
            prob = np.exp(log_softmax(logits))
            penalty += float(np.sum(prob * np.log(prob / np.array([1 - skip_target, skip_target]))))
            x = skips[None].astype(np.float64) @ np.concatenate(anchors) / (1.0 + skips.sum())
        else:
            x = p["g_emb"]
        anchors.append(h)
        anchors_w_1.append(h @ p["w_attn_1"])
    assert not values, "the arc has more entries than the controller decides"
    return log_prob, entropy, penalty


@pytest.mark.parametrize(
    "whole_channels, branches, temperature, tanh_constant",
    [(True, 6, None, 1.5), (True, 4, 5.0, 2.5), (False, 2, None, None)],  # the released flags, the paper's, neither
)
def test_sampled_arcs_are_valid_and_their_log_prob_is_recomputed_exactly(whole_channels, branches, temperature,
                                                                         tanh_constant):
    controller = MacroController(num_layers=LAYERS, num_branches=branches, whole_channels=whole_channels,
                                 num_filters=FILTERS, temperature=temperature, tanh_constant=tanh_constant)
    variables = jax.jit(controller.init)(jax.random.key(0), jax.random.key(1))
    sample = jax.jit(lambda v, key: controller.apply(v, key))
    rescore = jax.jit(lambda v, arc: controller.apply(v, arc, method=MacroController.log_prob))
    arcs = []
    for seed in range(12):
        out = sample(variables, jax.random.key(seed))
        arc = np.asarray(out["arc"])
        assert arc.shape == (arc_length(LAYERS, branches, whole_channels),)
        parsed = parse_arc(" ".join(map(str, arc)), LAYERS, branches, whole_channels)  # the child's validator
        check_channels(parsed, (FILTERS,) * LAYERS)
        assert format_arc(parsed).split() == [str(v) for v in arc]
        expected = numpy_score(variables["params"], arc, num_layers=LAYERS, num_branches=branches,
                               whole_channels=whole_channels, num_filters=FILTERS, tanh_constant=tanh_constant,
                               temperature=temperature, skip_target=0.4)
        np.testing.assert_allclose([out["log_prob"], out["entropy"], out["skip_penalty"]], expected, rtol=1e-5)
        again = rescore(variables, arc)
        np.testing.assert_allclose(again["log_prob"], out["log_prob"], rtol=1e-6)
        arcs.append(tuple(arc))
    assert len(set(arcs)) > 6, "sampling must depend on the key"
    assert sample._cache_size() == 1 and rescore._cache_size() == 1, "one compilation for every key and arc"


def test_skip_rate_and_gradient_of_the_log_prob():
    controller = MacroController(num_layers=LAYERS, num_branches=6)
    variables = jax.jit(controller.init)(jax.random.key(0), jax.random.key(1))
    out = jax.jit(controller.apply)(variables, jax.random.key(3))
    parsed = parse_arc(" ".join(map(str, np.asarray(out["arc"]))), LAYERS)
    bits = [bit for layer in parsed.layers for bit in layer.skips]
    assert float(out["skip_rate"]) == pytest.approx(sum(bits) / len(bits))
    score = lambda v: controller.apply(v, out["arc"], method=MacroController.log_prob)["log_prob"]
    grads = jax.jit(jax.grad(score))(variables)
    norms = {name: float(jnp.linalg.norm(g)) for name, g in grads["params"].items()}
    assert all(n > 0 for n in norms.values()), norms  # every weight takes part in scoring an arc
