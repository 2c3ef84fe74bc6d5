"""ENAS macro architectures ("arcs"): parsing, formatting and sampling in the official flat format.

The official format is a list of space-separated integers, one group per layer. Layer k (0-based)
contributes a head, then k skip bits:
  - whole-channel mode: the head is one op id (0 conv3x3, 1 sep3x3, 2 conv5x5, 3 sep5x5, 4 avgpool3x3,
    5 maxpool3x3), so a layer has 1 + k integers and L layers have L(L+1)/2;
  - channel mode: the head is `[start_0, count_0, ..., start_{B-1}, count_{B-1}]`, 2B integers.
Skip bit i of layer k selects `[stem, out_0, out_1, ...][i]`: bit 0 is the STEM, bit i >= 1 the output of
layer i-1. The layer's input (layer k-1's output) is never a skip.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

OP_NAMES = ("conv3x3", "sep3x3", "conv5x5", "sep5x5", "avgpool3x3", "maxpool3x3")
MAX_BRANCHES = len(OP_NAMES)

# scripts/cifar10_macro_final.sh of the official code: 24 layers, 4 branches, one row per layer.
PUBLISHED_FINAL_ARC = """\
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
PUBLISHED_FINAL_CONFIG = dict(num_layers=24, num_branches=4, whole_channels=True)

_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclasses.dataclass(frozen=True)
class LayerArc:
    """One layer. `op` in whole-channel mode, else `channels` = ((start, count), ...) per branch."""

    op: int | None
    channels: tuple[tuple[int, int], ...] | None
    skips: tuple[int, ...]  # k bits for layer k: [stem, out_0, ..., out_{k-2}]


@dataclasses.dataclass(frozen=True)
class Arc:
    """A parsed architecture: hashable, so it can be a static module field or jit argument."""

    layers: tuple[LayerArc, ...]
    num_branches: int
    whole_channels: bool

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def flat(self) -> tuple[int, ...]:
        """The official flat layout."""
        out: list[int] = []
        for layer in self.layers:
            if self.whole_channels:
                out.append(layer.op)
            else:
                out.extend(v for pair in layer.channels for v in pair)
            out.extend(layer.skips)
        return tuple(out)


def head_size(num_branches: int, whole_channels: bool) -> int:
    return 1 if whole_channels else 2 * num_branches


def layer_offsets(num_layers: int, num_branches: int, whole_channels: bool) -> tuple[int, ...]:
    """Flat index where each layer starts, plus the total length as the last entry."""
    head = head_size(num_branches, whole_channels)
    offsets = [0]
    for k in range(num_layers):
        offsets.append(offsets[-1] + head + k)
    return tuple(offsets)


def arc_length(num_layers: int, num_branches: int = 6, whole_channels: bool = True) -> int:
    return layer_offsets(num_layers, num_branches, whole_channels)[-1]


def _check_config(num_layers: int, num_branches: int) -> None:
    if not isinstance(num_layers, int | np.integer) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    if not isinstance(num_branches, int | np.integer) or not 1 <= num_branches <= MAX_BRANCHES:
        raise ValueError(f"num_branches must be in 1..{MAX_BRANCHES}, got {num_branches!r}")


def _locate(index: int, offsets: tuple[int, ...]) -> tuple[int, int]:
    """Flat index -> (layer, position within the layer's group)."""
    layer = int(np.searchsorted(offsets, index, side="right")) - 1
    return layer, index - offsets[layer]


def parse_arc(text: str, num_layers: int, num_branches: int = 6, whole_channels: bool = True) -> Arc:
    """Parses the official whitespace-separated format (newlines allowed) into a hashable `Arc`.

    Raises ValueError naming the layer and position (both 0-based) of the first bad entry. Channel-mode
    start/count values are only checked to be non-negative here; their upper bound depends on the
    model's filter count and is checked when a model is built.
    """
    _check_config(num_layers, num_branches)
    offsets = layer_offsets(num_layers, num_branches, whole_channels)
    expected = offsets[-1]
    head = head_size(num_branches, whole_channels)
    tokens = text.split()

    def where(i: int) -> str:
        if i >= expected:
            return f"token {i}, past the last layer"
        layer, pos = _locate(i, offsets)
        return f"layer {layer}, position {pos} (token {i})"

    values = []
    for i, token in enumerate(tokens):
        if not _INTEGER.fullmatch(token):
            raise ValueError(f"arc {where(i)}: {token!r} is not an integer")
        values.append(int(token))
    if len(values) != expected:
        mode = "whole_channels" if whole_channels else "channel mode"
        detail = f"{where(len(values))} is missing" if len(values) < expected else f"{where(expected)} is extra"
        raise ValueError(
            f"arc has {len(values)} integers, expected {expected} for {num_layers} layers "
            f"({mode}, num_branches={num_branches}): {detail}"
        )

    layers = []
    for k in range(num_layers):
        start = offsets[k]
        group = values[start : offsets[k + 1]]
        for pos, v in enumerate(group):
            if pos >= head:
                if v not in (0, 1):
                    raise ValueError(f"arc {where(start + pos)}: skip bit must be 0 or 1, got {v}")
            elif whole_channels:
                if not 0 <= v < num_branches:
                    raise ValueError(
                        f"arc {where(start + pos)}: op id {v} is out of range for num_branches={num_branches} "
                        f"(legal: 0..{num_branches - 1})"
                    )
            elif v < 0:
                kind = "count" if pos % 2 else "start"
                raise ValueError(f"arc {where(start + pos)}: channel {kind} must be non-negative, got {v}")
        heads, skips = group[:head], tuple(group[head:])
        if whole_channels:
            layers.append(LayerArc(op=heads[0], channels=None, skips=skips))
        else:
            pairs = tuple((heads[2 * b], heads[2 * b + 1]) for b in range(num_branches))
            layers.append(LayerArc(op=None, channels=pairs, skips=skips))
    return Arc(layers=tuple(layers), num_branches=num_branches, whole_channels=whole_channels)


def default_arc(num_layers: int, num_branches: int, whole_channels: bool, num_filters: int) -> Arc:
    """What `arc=None` means for both networks: op 0 (channel mode: every branch keeps all
    `num_filters` channels) in every layer, and no skips."""
    _check_config(num_layers, num_branches)
    head = (0,) if whole_channels else (0, num_filters) * num_branches
    flat = [v for k in range(num_layers) for v in head + (0,) * k]
    return parse_arc(" ".join(map(str, flat)), num_layers, num_branches, whole_channels)


def format_arc(arc: Arc) -> str:
    """The official flat format: `parse_arc(format_arc(a), ...) == a`."""
    return " ".join(str(v) for v in arc.flat())


def check_channels(arc: Arc, filters_per_layer: tuple[int, ...]) -> None:
    """Channel mode: each branch's [start, start + count) must lie inside the layer's filters."""
    if arc.whole_channels:
        return
    offsets = layer_offsets(arc.num_layers, arc.num_branches, False)
    for k, (layer, filters) in enumerate(zip(arc.layers, filters_per_layer, strict=True)):
        for b, (start, count) in enumerate(layer.channels):
            if start + count > filters:
                raise ValueError(
                    f"arc layer {k}, position {2 * b} (token {offsets[k] + 2 * b}): branch {b} takes channels "
                    f"[{start}, {start + count}) but the layer has {filters} filters"
                )


def random_arc(
    rng: np.random.Generator | int | None,
    num_layers: int,
    num_branches: int = 6,
    whole_channels: bool = True,
    num_filters: int | None = None,
) -> np.ndarray:
    """A uniformly random arc as an int32 array in the flat official layout.

    Channel mode needs `num_filters`; starts and counts are drawn like the official controller's
    ranges (start in [0, C), count in [1, C - start]).
    """
    _check_config(num_layers, num_branches)
    rng = np.random.default_rng(rng)
    out: list[int] = []
    for k in range(num_layers):
        if whole_channels:
            out.append(int(rng.integers(num_branches)))
        else:
            if num_filters is None:
                raise ValueError("random_arc in channel mode needs num_filters")
            for _ in range(num_branches):
                start = int(rng.integers(num_filters))
                out += [start, int(rng.integers(1, num_filters - start + 1))]
        out.extend(int(b) for b in rng.integers(0, 2, size=k))
    return np.asarray(out, dtype=np.int32)
