"""Bad values, drawn: whatever a user sets a config's fields to, `resolve_config` accepts the config or stops with
one line naming a field (ConfigError), and never with another exception.

Hypothesis draws 1-3 fields of a recipe's config (top-level fields, their sections' fields, model overrides) and a
value for each (wrong types, negatives, zeros, huge and non-finite numbers, unknown strings, nested mappings), sets
them as `--config.FIELD=VALUE` would (values that ml_collections itself refuses to set are not drawn), and
resolves. Derandomised: CI draws the same 600 examples every run.
"""

import math

import ml_collections
from helpers import load_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxnets.errors import ConfigError
from jaxnets.train import resolve_config

RECIPES = ("quickstart", "enas_search_quickstart", "audio_quickstart", "finetune_folder")


def field_paths(config, prefix=()) -> list[tuple[str, ...]]:
    paths = []
    for key, value in config.items():
        paths.append((*prefix, key))
        if isinstance(value, ml_collections.ConfigDict):
            paths += field_paths(value, (*prefix, key))
    return paths


FIELDS = sorted({path for name in RECIPES for path in field_paths(load_recipe(name))})

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, -1, 1, 2, 3, 7, 8, 1000, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.5, 0.5, 1.0, 1.5, 1e-12, 1e30, math.nan, math.inf, -math.inf]),
    st.text(max_size=12),
    st.sampled_from(["", "none", "auto", "xla", "sgd", "cosine", "bfloat16", "folder:", "audio_folder:", "train[:5%]",
                     "centre", "resize", "enas", "random", "l2_loss", "digits", "timbres", "cifar10"]),
    st.lists(st.one_of(st.integers(-3, 300), st.floats(-1, 2)), max_size=4).map(tuple),
    st.dictionaries(st.sampled_from(["flip", "crop", "lr", "n_mels", "arc", "x"]),
                    st.one_of(st.none(), st.integers(-2, 64), st.text(max_size=4)), max_size=2),
)


def _set(config, path, value) -> bool:
    """Sets config[path] = value as the command line would; False where ml_collections refuses the value."""
    *parents, name = path
    node = config
    for parent in parents:
        if parent not in node or not isinstance(node[parent], ml_collections.ConfigDict):
            return False  # (the command line cannot set a field the recipe lacks)
        node = node[parent]
    if name not in node:
        return False
    try:
        with node.unlocked():
            node[name] = value
    except (TypeError, ValueError, KeyError, AttributeError):
        return False
    return True


@settings(max_examples=600, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(recipe=st.sampled_from(RECIPES), changes=st.lists(st.tuples(st.sampled_from(FIELDS), VALUES), min_size=1,
                                                          max_size=3))
def test_resolve_config_accepts_or_names_a_field(recipe, changes):
    config = load_recipe(recipe)
    with config.unlocked():
        applied = [(path, value) for path, value in changes if _set(config, path, value)]
    try:
        resolve_config(config, device_count=1)
    except ConfigError as e:
        message = str(e)
        assert message.startswith("config"), f"{applied}: {message!r} names no field"
        assert "\n" not in message, f"{applied}: {message!r} is not one line"
