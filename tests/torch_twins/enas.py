"""The ENAS macro fixed-arc child in PyTorch (whole-channel mode), written from the reference semantics (the
official code's `src/cifar10/general_child.py`, with the intended behaviour where it is buggy: docs/enas.md).

Module names equal jaxnets' parameter paths (`layer_3.inp_conv.conv.weight` <-> `layer_3/inp_conv/conv/kernel`),
so `to_flax_variables` maps weights by name alone. The arc parser and the published arc are this file's own, so a
bug in jaxnets' parser cannot hide from parity.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

# scripts/cifar10_macro_final.sh of the official code: 24 layers, 4 branches, one row per layer.
PUBLISHED_FINAL_ARC = """
0
3 0
0 1 0
2 0 0 1
2 0 0 0 0
3 1 1 0 1 0
2 0 0 0 0 0 1
2 0 1 1 0 1 1 1
1 0 1 1 1 0 1 0 1
0 0 0 0 0 0 0 0 0 0
2 0 0 0 0 0 1 0 0 0 0
0 1 0 0 1 1 0 0 0 0 1 1
2 0 1 0 0 0 0 0 1 0 1 1 0
1 0 0 1 0 0 0 1 1 1 0 1 0 1
0 1 1 0 1 0 1 0 0 0 0 0 1 0 0
2 0 0 1 0 0 0 0 0 0 0 1 0 1 0 1
2 0 1 0 0 0 1 0 0 1 1 1 1 0 0 1 0
2 0 0 0 0 1 0 1 0 1 0 0 1 0 1 0 0 1
3 0 1 1 0 1 0 0 0 0 0 1 0 1 0 1 0 0 0
3 0 1 1 0 0 0 0 0 0 0 0 0 1 1 0 0 0 0 1
0 1 0 0 1 0 1 1 0 0 0 1 0 0 0 0 0 1 1 0 0
3 0 1 0 1 1 0 0 1 0 1 1 0 1 1 0 1 0 0 1 0 0
0 1 0 1 0 1 0 0 0 0 0 0 0 0 1 0 1 0 0 1 0 0 0
0 1 1 0 0 0 1 1 1 0 1 0 0 0 1 0 1 0 0 1 1 0 0 0
"""


def parse_arc(arc: str | Iterable[int], num_layers: int, num_branches: int) -> list[tuple[int, tuple[int, ...]]]:
    """The official whole-channel format: layer k is its op id, then k skip bits (bit 0: the stem, bit i: the
    output of layer i-1). Returns [(op, skips), ...] per layer."""
    tokens = [int(t) for t in (arc.split() if isinstance(arc, str) else arc)]
    expected = num_layers * (num_layers + 1) // 2
    if len(tokens) != expected:
        raise ValueError(f"{len(tokens)} integers for {num_layers} layers, expected {expected}")
    layers, start = [], 0
    for k in range(num_layers):
        op, skips = tokens[start], tuple(tokens[start + 1:start + 1 + k])
        if not 0 <= op < num_branches or any(bit not in (0, 1) for bit in skips):
            raise ValueError(f"layer {k}: op {op} (num_branches {num_branches}), skips {skips}")
        layers.append((op, skips))
        start += 1 + k
    return layers


KERNEL = {0: 3, 1: 3, 2: 5, 3: 5}


class ConvBN(nn.Module):
    def __init__(self, cin, cout, k=1, separable=False, pre_relu=False):
        super().__init__()
        self.pre_relu = pre_relu
        if separable:
            self.depthwise = nn.Conv2d(cin, cin, k, padding=k // 2, groups=cin, bias=False)
            self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        else:
            self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)

    def forward(self, x):
        if self.pre_relu:
            x = torch.relu(x)
        x = self.pointwise(self.depthwise(x)) if hasattr(self, "depthwise") else self.conv(x)
        return self.bn(x)


class FactorizedReduction(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.path1_conv = nn.Conv2d(cin, cout // 2, 1, bias=False)
        self.path2_conv = nn.Conv2d(cin, cout // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)

    def forward(self, x):
        shifted = nn.functional.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.path1_conv(x[:, :, ::2, ::2]), self.path2_conv(shifted[:, :, ::2, ::2])], 1))


class FixedLayer(nn.Module):
    def __init__(self, layer_id, op, skips, cin, c, separable_as_full_conv):
        super().__init__()
        self.layer_id, self.op, self.skips = layer_id, op, skips
        self.inp_conv = ConvBN(cin, c, pre_relu=True)
        if self.op in KERNEL:
            separable = self.op in (1, 3) and not separable_as_full_conv
            self.out_conv = ConvBN(c, c, KERNEL[self.op], separable, pre_relu=True)
        elif self.op == 4:
            self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        else:
            self.pool = nn.MaxPool2d(3, 1, 1)
        if layer_id > 0:
            self.skip_conv = ConvBN(c * (1 + sum(self.skips)), c, pre_relu=True)

    def forward(self, prev):
        out = self.inp_conv(prev[-1])
        out = self.out_conv(out) if self.op in KERNEL else self.pool(out)
        if self.layer_id == 0:
            return out
        selected = [t for t, bit in zip(prev[:-1], self.skips, strict=True) if bit] + [out]
        return self.skip_conv(torch.cat(selected, 1))


class ENASMacroChild(nn.Module):
    def __init__(self, arc=PUBLISHED_FINAL_ARC, num_layers=24, num_filters=96, num_branches=4, num_classes=10,
                 keep_prob=0.5, separable_as_full_conv=False):
        super().__init__()
        arc = parse_arc(arc, num_layers, num_branches)
        distance = num_layers // 3
        self.pool_layers = [k for k in (distance - 1, 2 * distance - 1) if k >= 0]
        self.stem = ConvBN(3, num_filters, 3)
        c, num_stored = num_filters, 1
        for k, (op, skips) in enumerate(arc):
            self.add_module(f"layer_{k}", FixedLayer(k, op, skips, c, c, separable_as_full_conv))
            num_stored += 1
            if k in self.pool_layers:
                for i in range(num_stored):
                    self.add_module(f"pool_at_{k}_from_{i}", FactorizedReduction(c, 2 * c))
                c *= 2
        self.num_layers = num_layers
        self.dropout = nn.Dropout(1.0 - keep_prob)
        self.fc = nn.Linear(c, num_classes, bias=False)

    def forward(self, x):  # x: [N, 3, H, W]
        stored = [self.stem(x)]
        for k in range(self.num_layers):
            stored.append(getattr(self, f"layer_{k}")(stored))
            if k in self.pool_layers:
                stored = [getattr(self, f"pool_at_{k}_from_{i}")(t) for i, t in enumerate(stored)]
        return self.fc(self.dropout(stored[-1].mean(dim=(2, 3))))


def to_flax_variables(state_dict) -> dict:
    """Maps this module's state_dict onto `ENASMacroChild` variables by name."""
    variables: dict = {"params": {}, "batch_stats": {}}
    for key, tensor in state_dict.items():
        *path, leaf = key.split(".")
        value = tensor.detach().cpu().numpy()
        if leaf == "num_batches_tracked":
            continue
        if path[0] == "fc":  # the head lives in its own Flax module
            path = ["head", "fc"]
        collection, leaf, value = {
            "running_mean": ("batch_stats", "mean", value),
            "running_var": ("batch_stats", "var", value),
            "bias": ("params", "bias", value),
        }.get(leaf) or (
            ("params", "kernel", value.transpose(2, 3, 1, 0)) if value.ndim == 4
            else ("params", "kernel", value.T) if value.ndim == 2
            else ("params", "scale", value)
        )
        node = variables[collection]
        for name in path:
            node = node.setdefault(name, {})
        node[leaf] = np.ascontiguousarray(value)
    return variables
