"""ENAS arc strings: the published arc, round trips, and errors that name the bad entry."""

import collections

import numpy as np
import pytest

from jaxnets.models.enas import PUBLISHED_FINAL_ARC, Arc, arc_length, format_arc, parse_arc, random_arc
from jaxnets.models.enas.arc import layer_offsets


def published():
    return parse_arc(PUBLISHED_FINAL_ARC, num_layers=24, num_branches=4)


def test_published_final_arc_decodes_as_reported():
    arc = published()
    assert isinstance(arc, Arc) and arc.num_layers == 24
    ops = collections.Counter(layer.op for layer in arc.layers)
    assert ops == {0: 8, 1: 2, 2: 9, 3: 5}, "conv3x3 x8, sep3x3 x2, conv5x5 x9, sep5x5 x5, no pools"
    skips = [bit for layer in arc.layers for bit in layer.skips]
    assert (len(skips), sum(skips)) == (276, 98)
    assert [len(layer.skips) for layer in arc.layers] == list(range(24))
    assert len(arc.flat()) == arc_length(24) == 300


def test_published_final_arc_round_trips():
    arc = published()
    text = format_arc(arc)
    assert text == " ".join(PUBLISHED_FINAL_ARC.split())
    assert parse_arc(text, 24, 4) == arc
    assert hash(parse_arc(text, 24, 4)) == hash(arc)  # usable as a static jit argument / module field


@pytest.mark.parametrize("whole_channels", [True, False])
def test_random_arcs_round_trip(whole_channels):
    for seed in range(5):
        flat = random_arc(seed, 7, 6, whole_channels, num_filters=12)
        assert flat.dtype == np.int32 and len(flat) == arc_length(7, 6, whole_channels)
        arc = parse_arc(" ".join(map(str, flat)), 7, 6, whole_channels)
        assert arc.flat() == tuple(flat)
        assert parse_arc(format_arc(arc), 7, 6, whole_channels) == arc


def test_channel_mode_layout():
    # 2 layers, 2 branches: [s0 c0 s1 c1] then [s0 c0 s1 c1 skip]; read from offset 0 (not num_branches).
    arc = parse_arc("0 4 2 6  1 3 5 2 1", num_layers=2, num_branches=2, whole_channels=False)
    assert arc.layers[0].channels == ((0, 4), (2, 6)) and arc.layers[0].skips == ()
    assert arc.layers[1].channels == ((1, 3), (5, 2)) and arc.layers[1].skips == (1,)
    assert arc_length(2, 2, whole_channels=False) == 9


def _with_token(text, num_layers, num_branches, layer, position, token, whole_channels=True):
    tokens = text.split()
    tokens[layer_offsets(num_layers, num_branches, whole_channels)[layer] + position] = token
    return " ".join(tokens)


BAD_ARCS = {
    "too short": (
        " ".join(PUBLISHED_FINAL_ARC.split()[:-1]),
        ["299 integers, expected 300", "layer 23, position 23", "missing"],
    ),
    "too long": (PUBLISHED_FINAL_ARC + " 1", ["301 integers, expected 300", "token 300, past the last layer"]),
    "op id out of range": (
        _with_token(PUBLISHED_FINAL_ARC, 24, 4, layer=5, position=0, token="4"),
        ["layer 5, position 0", "op id 4 is out of range for num_branches=4"],
    ),
    "negative op id": (
        _with_token(PUBLISHED_FINAL_ARC, 24, 4, layer=0, position=0, token="-1"),
        ["layer 0, position 0", "op id -1"],
    ),
    "skip bit 2": (
        _with_token(PUBLISHED_FINAL_ARC, 24, 4, layer=7, position=3, token="2"),
        ["layer 7, position 3", "skip bit must be 0 or 1, got 2"],
    ),
    "non-integer": (
        _with_token(PUBLISHED_FINAL_ARC, 24, 4, layer=2, position=1, token="1.5"),
        ["layer 2, position 1", "'1.5' is not an integer"],
    ),
    "word": (
        _with_token(PUBLISHED_FINAL_ARC, 24, 4, layer=23, position=12, token="one"),
        ["layer 23, position 12", "'one' is not an integer"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ARCS))
def test_malformed_arc_names_layer_and_position(case):
    text, fragments = BAD_ARCS[case]
    with pytest.raises(ValueError) as error:
        parse_arc(text, num_layers=24, num_branches=4)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_channel_mode_rejects_negative_values():
    text = "0 4 2 6  1 3 5 -2 1"
    with pytest.raises(ValueError, match=r"layer 1, position 3 .*channel count must be non-negative, got -2"):
        parse_arc(text, num_layers=2, num_branches=2, whole_channels=False)


def test_bad_configuration():
    with pytest.raises(ValueError, match="num_branches must be in 1..6"):
        parse_arc("0", num_layers=1, num_branches=7)
    with pytest.raises(ValueError, match="num_layers"):
        parse_arc("", num_layers=0)
