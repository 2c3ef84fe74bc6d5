"""The shared-weight ENAS macro search network (`enas_macro_shared`): one program for every arc.

The arc is a traced int array in the official flat layout, so a jitted train step compiles once and
serves every sampled architecture: the op is picked with `lax.switch` (only that branch runs; each op is traced
once per resolution, `switched_ops`), skips are 0/1 masks, and channel mode masks channels instead of slicing
them (static shapes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxnets.models.enas.arc import arc_length, check_channels, default_arc, layer_offsets, parse_arc
from jaxnets.models.enas.ops import (
    KERNEL_SIZE,
    MASKED_BN_EPSILON,
    SEPARABLE,
    ConvBN,
    FactorizedReduction,
    Head,
    check_fields,
    pool3x3,
    pool_layers,
)
from jaxnets.models.layers import batch_norm, trace_settings
from jaxnets.models.normalization import frozen_statistics_pattern


class SharedBranch(nn.Module):
    """Op `op` with its own weights: 1x1 -> BN -> ReLU, then kxk conv/sep -> BN -> ReLU, or a 3x3 pool.

    In channel mode `mask` [C] keeps the output channels [start, start + count) and zeroes the rest.
    """

    op: int
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool, mask: jax.Array | None = None):
        conv_bn = functools.partial(ConvBN, dtype=self.dtype)
        y = nn.relu(conv_bn(self.features, name="inp_conv")(x, train))
        if self.op in KERNEL_SIZE:
            out_conv = conv_bn(
                self.features, KERNEL_SIZE[self.op], self.op in SEPARABLE, epsilon=MASKED_BN_EPSILON, name="out_conv"
            )
            return nn.relu(out_conv(y, train, mask))  # MaskedBatchNorm already zeroes unselected channels
        y = pool3x3(y, self.op)
        return y if mask is None else y * mask.reshape(1, 1, 1, -1).astype(y.dtype)


@functools.cache
def switched_ops(num_branches: int, features: int, dtype: Any, train: bool, settings: tuple) -> Callable:
    """(op, params, batch_stats, x) -> (y, batch_stats): op `op` of a whole-channel layer, picked by `lax.switch`.

    `params`, `batch_stats`: every branch's (`branch_0`, ...); only op `op`'s statistics move. Its gradient is the
    chosen op's pullback, the op's forward recomputed from the saved inputs (rematerialised, see SharedLayer.setup);
    the statistics it returns carry no gradient (nothing differentiates a running average).
    One function per width, dtype, mode and trace-time setting (`layers.trace_settings()`, here only a cache key),
    its branches and pullbacks fixed function objects: JAX keeps the jaxpr it traced for a function and input
    shapes, so the layers of one resolution trace each op and its pullback once. `nn.switch` traces every layer
    anew, and JAX's derivative of a switch re-traces the transposed branches at every layer, whatever they are.
    The search recipe's step (benchmarks/results/enas_search_step.md): trace 9.5-10.1 -> 2.3-3.0 s, the same
    program.
    """
    ops = [_pure_branch(b, features, dtype, train) for b in range(num_branches)]
    pullbacks = [_pullback(op) for op in ops]

    def forward(op, params, batch_stats, x):
        return jax.lax.switch(op, ops, params, batch_stats, x)

    def forward_saving_inputs(op, params, batch_stats, x):
        return forward(op, params, batch_stats, x), (op, params, batch_stats, x)

    def backward(inputs, cotangents):
        op, params, batch_stats, x = inputs
        d_params, d_x = jax.lax.switch(op, pullbacks, params, batch_stats, x, cotangents[0])
        return None, d_params, None, d_x  # (no gradient for the op index and the statistics)

    run = jax.custom_vjp(forward)
    run.defvjp(forward_saving_inputs, backward)
    return run


def _pure_branch(op: int, features: int, dtype: Any, train: bool) -> Callable:
    branch = SharedBranch(op, features, dtype)
    name = f"branch_{op}"

    def run(params, batch_stats, x):
        own = {"params": params[name], "batch_stats": batch_stats[name]}
        if not train:
            return branch.apply(own, x, False), batch_stats
        y, updates = branch.apply(own, x, True, mutable=["batch_stats"])
        return y, {**batch_stats, name: updates["batch_stats"]}

    return run


def _pullback(branch: Callable) -> Callable:
    def pullback(params, batch_stats, x, d_y):
        _, vjp = jax.vjp(lambda params, x: branch(params, batch_stats, x)[0], params, x)
        return vjp(d_y)

    return pullback


class SharedLayer(nn.Module):
    """Layer k: `prev` = [stem, out_0, ..., out_{k-1}], `spec` = this layer's slice of the flat arc."""

    layer_id: int
    num_branches: int
    features: int
    whole_channels: bool = True
    dtype: Any = jnp.float32

    def setup(self):
        # One op runs (lax.switch), and its backward needs that op's activations; but a differentiated switch
        # returns the residuals of every branch (zeros from those that did not run): 6 ops' worth of activations
        # per layer, written at every step. Rematerialised, a branch keeps only its inputs, which all branches
        # share, and recomputes its forward in the backward pass. The search recipe's step (12 layers, 36 filters,
        # batch 64, 32x32, with the trainer's pinned conv platform): XLA scratch 1,085 -> 214 MiB, 0.83-1.04 ->
        # 0.52-0.68 s a step (benchmarks/results/enas_search_step.md). Channel mode runs every branch, no switch.
        branch = nn.remat(SharedBranch, static_argnums=(2,)) if self.whole_channels else SharedBranch  # (2: train)
        for b in range(self.num_branches):  # named branch_0 ... branch_{B-1}
            setattr(self, f"branch_{b}", branch(b, self.features, self.dtype))
        if not self.whole_channels:
            self.final_conv = ConvBN(self.features, dtype=self.dtype)

    @nn.compact
    def __call__(self, prev, spec, train: bool):
        x = prev[-1]
        if self.whole_channels:
            out = self._select_op(x, spec[0], train)
            skips = spec[1:]
        else:
            out = self._mix_channels(x, spec[: 2 * self.num_branches], train)
            skips = spec[2 * self.num_branches :]
        if self.layer_id == 0:
            return out
        for i in range(self.layer_id):  # bit i selects prev[i]; prev[-1] is the input, never a skip
            out = out + skips[i].astype(out.dtype) * prev[i]
        return batch_norm(train, self.dtype)(name="skip_bn")(out)

    def _select_op(self, x, op, train):
        def branch(b):
            return lambda mdl, x: getattr(mdl, f"branch_{b}")(x, train)

        branches = [branch(b) for b in range(self.num_branches)]
        if self.is_initializing():  # build every op's weights, whatever arc `init` saw
            outs = jnp.stack([fn(self, x) for fn in branches])
            return outs[jnp.clip(op, 0, self.num_branches - 1)]  # what lax.switch returns, minus its compile
        # OFFICIAL BUG not reproduced: the TF code registers its branches as late-binding lambdas
        # (`lambda: y`), so every case returned the LAST branch and the sampled op never mattered.
        # Here the op named by the arc really runs (and only it: lax.switch).
        if frozen_statistics_pattern() is not None:  # BN's module path decides: only bound modules have it
            return nn.switch(op, branches, self, x)
        names = [f"branch_{b}" for b in range(self.num_branches)]
        params, batch_stats = ({n: self.variables[col][n] for n in names} for col in ("params", "batch_stats"))
        run = switched_ops(self.num_branches, self.features, self.dtype, train, trace_settings())
        y, batch_stats = run(op, params, batch_stats, x)
        if train:
            for n in names:
                self.put_variable("batch_stats", n, batch_stats[n])
        return y

    def _mix_channels(self, x, starts_counts, train):
        # Every branch runs; branch b keeps channels [start_b, start_b + count_b). The official stored
        # [B*C, C] weight, row-masked to the kept channels, is this 1x1 conv over the zero-masked concat.
        channel = jnp.arange(self.features)
        outs = []
        for b in range(self.num_branches):
            start, count = starts_counts[2 * b], starts_counts[2 * b + 1]
            mask = (channel >= start) & (channel < start + count)
            outs.append(getattr(self, f"branch_{b}")(x, train, mask))
        return nn.relu(self.final_conv(jnp.concatenate(outs, axis=-1), train))


class ENASMacroSearch(nn.Module):
    """The ENAS macro search space with shared weights; `apply(variables, x, arc, train=...)`.

    `arc`: int array in the official flat layout (length L(L+1)/2 in whole-channel mode, L*2B + L(L-1)/2
    in channel mode), traced or concrete; a concrete arc is validated. `arc=None` means every layer
    op 0 (channel mode: every branch keeps all channels) and no skips, e.g. for a generic `init`.
    C stays constant; each pool layer is followed by a factorized reduction of every stored tensor.
    """

    num_layers: int = 12
    num_filters: int = 36
    num_branches: int = 6
    num_classes: int = 10
    keep_prob: float = 0.9
    whole_channels: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, arc: jax.Array | None = None, train: bool = False):  # x: [N, H, W, 3]
        check_fields(self)
        arc = self._checked_arc(arc)
        offsets = layer_offsets(self.num_layers, self.num_branches, self.whole_channels)
        c = self.num_filters
        layers = [ConvBN(c, 3, dtype=self.dtype, name="stem")(x, train)]
        for k in range(self.num_layers):
            layer = SharedLayer(
                k, self.num_branches, c, self.whole_channels, self.dtype, name=f"layer_{k}"
            )
            layers.append(layer(layers, arc[offsets[k] : offsets[k + 1]], train))
            if k in pool_layers(self.num_layers):
                layers = [
                    FactorizedReduction(c, self.dtype, name=f"pool_at_{k}_from_{i}")(t, train)
                    for i, t in enumerate(layers)
                ]
        return Head(self.num_classes, self.keep_prob, self.dtype, name="head")(layers[-1], train)

    def _checked_arc(self, arc):
        expected = arc_length(self.num_layers, self.num_branches, self.whole_channels)
        if arc is None:
            arc = default_arc(self.num_layers, self.num_branches, self.whole_channels, self.num_filters)
            return jnp.asarray(arc.flat(), jnp.int32)
        if jnp.shape(arc) != (expected,):
            raise ValueError(
                f"arc has shape {jnp.shape(arc)}, expected ({expected},) for {self.num_layers} layers "
                f"(whole_channels={self.whole_channels}, num_branches={self.num_branches})"
            )
        if not isinstance(arc, jax.core.Tracer):  # concrete: check its values too
            parsed = parse_arc(
                " ".join(map(str, np.asarray(arc).tolist())), self.num_layers, self.num_branches, self.whole_channels
            )
            check_channels(parsed, (self.num_filters,) * self.num_layers)
        return jnp.asarray(arc, jnp.int32)
