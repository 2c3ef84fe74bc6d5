"""BatchNorm folded into the convolution that feeds it, for inference (what `jaxnets.export` writes).

In inference a BatchNorm is a per-channel affine map, y = (x - mean) * scale / sqrt(var + eps) + bias; when its
input is a convolution's output, the map moves into the convolution: its kernel times the per-channel factor, and
one bias. The exported program then has no BatchNorm left where a `Conv` module feeds one (ResNeXt's and
MobileNetV2's every BN; 7 of a small ENAS child's 14: not those after a concatenation or a pooling), and one
convolution plus an add where it had a convolution and a normalisation.

Which BN follows which convolution is read from the model itself, not from names: a trace records each `Conv`'s
output, and a `BatchNorm` whose input *is* that output (the same array, not a copy or a concatenation) is folded
into it. That is exact when the convolution's output feeds nothing but its BN, as in every network of the zoo; a
model of one's own might also use it elsewhere (a residual taken before the BN), which the trace cannot see, so
`folding_error` measures the folded function against the model and `jaxnets.export` keeps BatchNorm unfolded when
they differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxnets.models import layers
from jaxnets.models.layers import Conv
from jaxnets.models.normalization import BatchNorm

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Fold:
    """One BN folded into the convolution before it."""

    conv: Path
    batch_norm: Path
    epsilon: float


def conv_batch_norm_pairs(model: nn.Module, variables, example: jax.ShapeDtypeStruct) -> list[Fold]:
    """The (convolution, BN) pairs of `model` in inference, found by tracing it on `example` (abstractly)."""
    outputs: dict[int, tuple[Path, jax.Array]] = {}  # id of a Conv's output -> (its path, the output: kept alive)
    folds: list[Fold] = []

    def record(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        if context.method_name != "__call__":
            return y
        if isinstance(context.module, Conv):
            outputs[id(y)] = (context.module.path, y)
        elif isinstance(context.module, BatchNorm) and id(args[0]) in outputs:
            conv_path, output = outputs.pop(id(args[0]))
            if output is args[0]:
                folds.append(Fold(conv_path, context.module.path, context.module.epsilon))
        return y

    def trace(variables, x):
        with layers.separate_batch_norm(), nn.intercept_methods(record):
            return model.apply(variables, x, train=False)

    jax.eval_shape(trace, variables, example)
    return folds


def fold_batch_norm(model: nn.Module, variables, example: jax.ShapeDtypeStruct) -> Callable[[jax.Array], jax.Array]:
    """`model`'s inference (inputs [N, H, W, C] like `example` -> logits) with every BN that follows a convolution
    folded into it."""
    folds = conv_batch_norm_pairs(model, variables, example)
    params = flax.core.unfreeze(variables["params"])  # a copy (of the dicts), whose kernels are replaced
    added_bias: dict[Path, jax.Array] = {}  # a folded convolution without a bias of its own: the bias to add
    for fold in folds:
        conv, batch_norm = _at(params, fold.conv), _at(variables["params"], fold.batch_norm)
        statistics = _at(variables["batch_stats"], fold.batch_norm)
        factor = batch_norm["scale"] * jax.lax.rsqrt(statistics["var"] + fold.epsilon)  # per output channel
        bias = (conv.get("bias", 0.0) - statistics["mean"]) * factor + batch_norm["bias"]
        conv["kernel"] = conv["kernel"] * factor.reshape(1, 1, 1, -1)  # [kh, kw, in / groups, out]
        if "bias" in conv:
            conv["bias"] = bias
        else:
            added_bias[fold.conv] = bias
    folded_batch_norm = {fold.batch_norm for fold in folds}

    def folded(next_fun, args, kwargs, context):
        path = context.module.path
        if context.method_name == "__call__" and isinstance(context.module, BatchNorm) and path in folded_batch_norm:
            return args[0]  # already applied by the convolution before it
        y = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and path in added_bias and isinstance(context.module, Conv):
            y = y + added_bias[path].astype(y.dtype).reshape(1, 1, 1, -1)
        return y

    folded_variables = {**variables, "params": params}

    def logits(x):
        with layers.separate_batch_norm(), nn.intercept_methods(folded):
            return model.apply(folded_variables, x, train=False)

    return logits


def folding_error(model: nn.Module, variables, folded: Callable[[jax.Array], jax.Array],
                  example: jax.ShapeDtypeStruct, seed: int = 0) -> float:
    """max |folded - model| / max |model| of the logits of 2 random inputs shaped like `example` (N(0, 1))."""
    x = jax.random.normal(jax.random.key(seed), (2, *example.shape[1:]), example.dtype)
    expected = jax.jit(lambda x: model.apply(variables, x, train=False))(x)
    return float(jnp.max(jnp.abs(jax.jit(folded)(x) - expected)) / jnp.maximum(jnp.max(jnp.abs(expected)), 1e-30))


def _at(tree, path: Path) -> dict:
    """The dict of one module's variables (its path's names, one level each)."""
    for name in path:
        tree = tree[name]
    return tree
