"""The fixed-arc ENAS macro child network (`enas_macro`): one specialised program per arc."""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from jaxnets.models.enas.arc import PUBLISHED_FINAL_ARC, Arc, LayerArc, check_channels, default_arc, parse_arc
from jaxnets.models.enas.ops import (
    KERNEL_SIZE,
    SEPARABLE,
    ConcatConvBN,
    ConvBN,
    FactorizedReduction,
    Head,
    check_fields,
    filters_per_layer,
    pool3x3,
    pool_layers,
)


class FixedLayer(nn.Module):
    """Layer k of a fixed arc: `prev` = [stem, out_0, ..., out_{k-1}] (already reduced) -> out_k."""

    layer_id: int
    spec: LayerArc
    features: int
    separable_as_full_conv: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, prev, train: bool):
        conv_bn = functools.partial(ConvBN, dtype=self.dtype)
        x = prev[-1]
        c = self.features
        if self.spec.op is not None:
            op = self.spec.op
            # Pre-activation: ReLU -> 1x1 -> BN, then ReLU -> kxk -> BN (or the pool). Official pools
            # 4/5 are unimplemented (they crash); jaxnets defines them as ReLU -> 1x1 -> BN -> pool.
            # Each output's consumers ReLU it: its ConvBN does (post_relu), where inference runs that ReLU inside the
            # convolution. out_conv's output feeds only the skip_conv from layer 1 on; layer 0's is the next layers'
            # raw input too (the factorized reductions, the head).
            if op in KERNEL_SIZE:
                out = conv_bn(c, pre_relu=True, post_relu=True, name="inp_conv")(x, train)
                separable = op in SEPARABLE and not self.separable_as_full_conv
                out = conv_bn(c, KERNEL_SIZE[op], separable, post_relu=self.layer_id > 0, name="out_conv")(out, train)
            else:
                out = pool3x3(conv_bn(c, pre_relu=True, name="inp_conv")(x, train), op)
                if self.layer_id > 0:
                    out = nn.relu(out)
        else:
            out = self._channel_branches(x, conv_bn, train)
        if self.layer_id == 0:
            return out
        # Skips in ascending order, then this layer's output (ReLU'd above); the 1x1 runs even with no skip selected.
        selected = [nn.relu(t) for t, bit in zip(prev[:-1], self.spec.skips, strict=True) if bit] + [out]
        return ConcatConvBN(c, dtype=self.dtype, name="skip_conv")(selected, train)

    def _channel_branches(self, x, conv_bn, train):
        """Channel mode: branch b contributes `count_b` channels (its start only matters in search).

        The official fixed channel-mode path cannot run (it calls `_conv_branch` without `out_filters`,
        and its separable path uses undefined names); this is its evident intent: each branch as in the
        search (1x1 -> BN -> ReLU -> op -> BN -> ReLU), concat, ReLU -> 1x1 to C -> BN.
        """
        outs = []
        for b, (_, count) in enumerate(self.spec.channels):
            if count == 0:
                continue
            if b in KERNEL_SIZE:
                y = conv_bn(self.features, post_relu=True, name=f"branch_{b}_inp_conv")(x, train)
                separable = b in SEPARABLE and not self.separable_as_full_conv
                y = conv_bn(count, KERNEL_SIZE[b], separable, post_relu=True, name=f"branch_{b}_out_conv")(y, train)
            else:  # the search's pool branch keeps `count` of its 1x1's channels: a 1x1 to `count` here
                y = pool3x3(conv_bn(count, post_relu=True, name=f"branch_{b}_inp_conv")(x, train), b)
            outs.append(y)
        if not outs:
            raise ValueError(f"arc layer {self.layer_id}: every branch has count 0, the layer has no output")
        final_conv = conv_bn(self.features, pre_relu=True, post_relu=self.layer_id > 0, name="final_conv")
        return final_conv(jnp.concatenate(outs, axis=-1), train)


class ENASMacroChild(nn.Module):
    """ENAS macro child with a fixed (static, hashable) arc; defaults = the released final model.

    `arc`: a parsed `Arc`, the official text (parsed with this model's num_layers/num_branches/
    whole_channels), or None for `default_arc` (op 0, no skips).
    Stem 3x3 conv -> BN; `num_layers` layers; after each pool layer every stored tensor goes through its
    own factorized reduction and C doubles; head: global average pool -> dropout -> dense (no bias).
    `separable_as_full_conv=True` builds ops 1/3 as full kxk convs like the released code did.
    """

    arc: Arc | str | None = parse_arc(PUBLISHED_FINAL_ARC, num_layers=24, num_branches=4)
    num_layers: int = 24
    num_filters: int = 96
    num_branches: int = 4
    num_classes: int = 10
    keep_prob: float = 0.5
    whole_channels: bool = True
    separable_as_full_conv: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):  # x: [N, H, W, 3] float32
        arc = self._checked_arc()
        conv_bn = functools.partial(ConvBN, dtype=self.dtype)
        layers = [conv_bn(self.num_filters, 3, name="stem")(x, train)]  # [stem, out_0, out_1, ...]
        c = self.num_filters
        for k, spec in enumerate(arc.layers):
            layer = FixedLayer(
                k, spec, c, self.separable_as_full_conv, self.dtype, name=f"layer_{k}"
            )
            layers.append(layer(layers, train))
            if k in pool_layers(self.num_layers):
                c *= 2
                layers = [
                    FactorizedReduction(c, self.dtype, name=f"pool_at_{k}_from_{i}")(t, train)
                    for i, t in enumerate(layers)
                ]
        return Head(self.num_classes, self.keep_prob, self.dtype, name="head")(layers[-1], train)

    def _checked_arc(self) -> Arc:
        check_fields(self)
        arc = self.arc
        if arc is None:
            arc = default_arc(self.num_layers, self.num_branches, self.whole_channels, self.num_filters)
        elif isinstance(arc, str):
            arc = parse_arc(arc, self.num_layers, self.num_branches, self.whole_channels)
        for field in ("num_layers", "num_branches", "whole_channels"):
            have, want = getattr(arc, field), getattr(self, field)
            if have != want:
                raise ValueError(f"ENASMacroChild.arc has {field}={have} but the model has {field}={want}")
        check_channels(arc, filters_per_layer(self.num_layers, self.num_filters, doubling=True))
        return arc
