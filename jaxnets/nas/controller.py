"""The ENAS macro controller: a one-layer LSTM that samples arcs in the official flat layout.

Semantics follow the official `general_controller.py` (../shared/reference/enas_macro.md, section 4):
- Per layer, an op step then (for layers k > 0) a skip step, each one LSTM step (64 units, no bias,
  gates i, f, o, g). The first input is the learned `g_emb`.
- Op step: logits = h @ w_soft, optionally / temperature, then tanh_constant * tanh(.); the sampled op's
  embedding `w_emb[op]` is the next input.
- Skip step: attention over the anchors (the skip steps' hidden states) of earlier layers,
  q_j = v^T tanh(W1 h_j + W2 h), logits [-q_j, q_j], one bit per earlier layer; the next input is the
  mean of the chosen anchors, (skips @ anchors) / (1 + sum(skips)). Layer 0 has no skip bits and feeds
  `g_emb` again.
- Channel mode (whole_channels=False): instead of the op, per branch a start step (logits over the C
  filters) and a count step (logits over counts 1..C, those past C - start masked), each with its own
  softmax weights and embeddings.

Fixed here (the official code's bugs, named):
- The skip-rate KL penalty uses the probability the bits are sampled with: softmax([-q, q])[1] =
  sigmoid(2q). The official code sampled with that but penalised sigmoid(q).
- Entropy is the entropy of each decision's whole distribution, summed over the arc's decisions (the
  official "entropy" was -log p * p of the sampled value only).
- Channel mode allows count = C (a branch keeping every channel, as `default_arc` does); the official
  count softmax had C - 1 entries, so count <= C - 1.

Sampling is jitted JAX with an explicit PRNG key; `log_prob(variables, arc)` re-scores a given arc.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxnets.models.enas.arc import layer_offsets

_INIT = nn.initializers.uniform(scale=0.2)  # U(0, 0.2) shifted below to U(-0.1, 0.1), as the official init


def _uniform(key, shape, dtype=jnp.float32):
    return _INIT(key, shape, dtype) - 0.1


class MacroController(nn.Module):
    num_layers: int
    num_branches: int = 6
    whole_channels: bool = True
    num_filters: int = 36  # channel mode: C, the filters a branch takes a range of
    lstm_size: int = 64
    temperature: float | None = None
    tanh_constant: float | None = 1.5
    skip_target: float = 0.4  # the skip rate the KL penalty pulls towards

    def setup(self):
        h = self.lstm_size
        self.w_lstm = self.param("w_lstm", _uniform, (2 * h, 4 * h))
        self.g_emb = self.param("g_emb", _uniform, (1, h))
        if self.whole_channels:
            self.w_emb = self.param("w_emb", _uniform, (self.num_branches, h))
            self.w_soft = self.param("w_soft", _uniform, (h, self.num_branches))
        else:
            c, b = self.num_filters, self.num_branches
            self.w_start_emb = self.param("w_start_emb", _uniform, (b, c, h))
            self.w_start_soft = self.param("w_start_soft", _uniform, (b, h, c))
            self.w_count_emb = self.param("w_count_emb", _uniform, (b, c, h))
            self.w_count_soft = self.param("w_count_soft", _uniform, (b, h, c))
        self.w_attn_1 = self.param("w_attn_1", _uniform, (h, h))
        self.w_attn_2 = self.param("w_attn_2", _uniform, (h, h))
        self.v_attn = self.param("v_attn", _uniform, (h, 1))

    def __call__(self, key: jax.Array) -> dict:
        """Samples one arc: {"arc": int32 [length], "log_prob", "entropy", "skip_rate", "skip_penalty"}."""
        return self._run(key=key, arc=None)

    def log_prob(self, arc: jax.Array) -> dict:
        """The same quantities for a given arc (teacher forcing): its log-probability under the controller."""
        return self._run(key=None, arc=jnp.asarray(arc, jnp.int32))

    def _lstm(self, x, c, h):
        i, f, o, g = jnp.split(jnp.concatenate([x, h], axis=1) @ self.w_lstm, 4, axis=1)
        c = jax.nn.sigmoid(i) * jnp.tanh(g) + jax.nn.sigmoid(f) * c
        return c, jax.nn.sigmoid(o) * jnp.tanh(c)

    def _shape(self, logits):
        if self.temperature is not None:
            logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * jnp.tanh(logits)
        return logits

    def _run(self, key, arc) -> dict:
        """Samples (key given) or re-scores (arc given) the decisions in the official order."""
        offsets = layer_offsets(self.num_layers, self.num_branches, self.whole_channels)
        keys = iter(jax.random.split(key, 3 * self.num_layers * (1 + 2 * self.num_branches))) if arc is None else None
        out: list[jax.Array] = []
        totals = {"log_prob": jnp.zeros(()), "entropy": jnp.zeros(()), "skips": jnp.zeros(()),
                  "skip_penalty": jnp.zeros(())}

        def decide(logits, given):  # logits [..., n] -> chosen ints [...]; adds to log_prob and entropy
            log_p = jax.nn.log_softmax(logits, axis=-1)
            choice = jax.random.categorical(next(keys), logits, axis=-1) if given is None else given
            totals["log_prob"] += jnp.sum(jnp.take_along_axis(log_p, choice[..., None], axis=-1))
            totals["entropy"] += jnp.sum(-jnp.exp(log_p) * jnp.where(jnp.isfinite(log_p), log_p, 0.0))
            return choice

        h_size = self.lstm_size
        c = h = jnp.zeros((1, h_size))
        inputs = self.g_emb
        anchors, anchors_w_1 = [], []
        for k in range(self.num_layers):
            given = None if arc is None else arc[offsets[k] : offsets[k + 1]]
            if self.whole_channels:
                c, h = self._lstm(inputs, c, h)
                op = decide(self._shape(h @ self.w_soft)[0], None if given is None else given[0])
                out.append(op[None])
                inputs = self.w_emb[op][None]
            else:
                for b in range(self.num_branches):
                    c, h = self._lstm(inputs, c, h)
                    start = decide(self._shape(h @ self.w_start_soft[b])[0], None if given is None else given[2 * b])
                    c, h = self._lstm(self.w_start_emb[b, start][None], c, h)
                    counts = jnp.arange(1, self.num_filters + 1)
                    logits = jnp.where(counts <= self.num_filters - start, self._shape(h @ self.w_count_soft[b])[0],
                                       -jnp.inf)
                    count = decide(logits, None if given is None else given[2 * b + 1] - 1) + 1
                    out += [start[None], count[None]]
                    inputs = self.w_count_emb[b, count - 1][None]
            c, h = self._lstm(inputs, c, h)
            if k > 0:
                query = jnp.tanh(jnp.concatenate(anchors_w_1, axis=0) + h @ self.w_attn_2) @ self.v_attn  # [k, 1]
                logits = self._shape(jnp.concatenate([-query, query], axis=1))  # [k, 2]
                skips = decide(logits, None if given is None else given[-k:])
                p_skip = jax.nn.softmax(logits, axis=-1)  # the distribution the bits are sampled from
                target = jnp.array([[1.0 - self.skip_target, self.skip_target]])
                totals["skip_penalty"] += jnp.sum(p_skip * jnp.log(p_skip / target))
                totals["skips"] += jnp.sum(skips)
                out.append(skips)
                chosen = skips.astype(jnp.float32)[None]
                inputs = chosen @ jnp.concatenate(anchors, axis=0) / (1.0 + jnp.sum(chosen))
            else:
                inputs = self.g_emb
            anchors.append(h)
            anchors_w_1.append(h @ self.w_attn_1)
        num_bits = self.num_layers * (self.num_layers - 1) // 2
        return {
            "arc": jnp.concatenate(out).astype(jnp.int32),
            "log_prob": totals["log_prob"],
            "entropy": totals["entropy"],
            "skip_rate": totals["skips"] / max(num_bits, 1),
            "skip_penalty": totals["skip_penalty"],
        }
