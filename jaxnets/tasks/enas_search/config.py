"""The search's own config section, `config.search`, with its one set of defaults, what it derives and its checks.

The defaults are the released search's values (docs/enas.md). The rewards come from `config.eval_split`, which
a search holds out of the training data (`hold_out_validation`).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from jaxnets.data import dataset_spec
from jaxnets.errors import ConfigError
from jaxnets.models import create_model
from jaxnets.models.enas import default_arc, format_arc
from jaxnets.tasks.enas_search.final import final_config
from jaxnets.train import resolve_config
from jaxnets.values import is_real

# A search trains on the first SEARCH_TRAIN_PERCENT of the training split and holds out the rest for its
# rewards: CIFAR's last 5,000 of 50,000 images, as the released search did, and the same share of any dataset.
SEARCH_TRAIN_PERCENT = 90


def search_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.strategy = "enas"  # "enas": the controller samples arcs and learns; "random": uniform arcs (the baseline)
    c.controller_lstm_size = 64
    c.controller_temperature = placeholder(float)
    c.controller_tanh_constant = 1.5  # logits -> tanh_constant * tanh(logits); None: raw logits
    c.controller_learning_rate = 1e-3
    c.controller_adam_b1 = 0.0
    c.controller_adam_b2 = 0.999
    c.controller_adam_eps = 1e-3
    c.controller_grad_clip_norm = placeholder(float)
    c.controller_entropy_weight = 1e-4  # reward = held-out accuracy + entropy_weight * entropy of the arc
    c.controller_baseline_decay = 0.99  # the reward EMA that REINFORCE subtracts
    c.controller_skip_target = 0.4  # the skip rate a KL penalty pulls the controller towards ...
    c.controller_skip_weight = 0.8  # ... with this weight
    c.controller_updates_per_epoch = 50  # controller updates after each epoch of the shared network
    c.controller_arcs_per_update = 20  # arcs sampled (and gradients averaged) per update
    c.controller_batch_size = 128  # held-out images that score one sampled arc (over all devices)
    c.eval_arcs = 10  # arcs scored on the whole held-out split at each evaluation
    c.final_arcs = 100  # the final arc is the best of this many samples on the held-out split
    # final_config.py: the fields (and model_overrides) that differ from base_config() when the found arc is
    # trained from scratch (the searched model's layers, branches and data are taken from the search).
    c.final = ml_collections.ConfigDict()
    return c


def prepare_search(config) -> None:
    """Before the engine's checks: the model a search trains (its overrides would be refused first, with a less
    helpful message), and the held-out split."""
    if config.model != "enas_macro_shared":
        raise ConfigError(f"config.model: the search task trains the ENAS search space 'enas_macro_shared', "
                          f"not {config.model!r}")
    hold_out_validation(config)


def hold_out_validation(config) -> None:
    """A search trains on the first 90% of the training split and takes rewards on the rest, never the test set."""
    spec = dataset_spec(config.dataset)
    if spec is None:
        return  # the data check names the unknown dataset
    if (config.train_split is None) != (config.eval_split is None):
        raise ConfigError(
            "config.train_split and config.eval_split: a search needs both (eval_split held out of the training "
            "data) or neither (the default: the first and last parts of the dataset's training split)"
        )
    if config.train_split is None:
        config.train_split = f"{spec.train_split}[:{SEARCH_TRAIN_PERCENT}%]"
        config.eval_split = f"{spec.train_split}[{SEARCH_TRAIN_PERCENT}%:]"


_POSITIVE_INTS = ("controller_lstm_size", "controller_updates_per_epoch", "controller_arcs_per_update", "eval_arcs",
                  "final_arcs")
_POSITIVE_FLOATS = ("controller_learning_rate", "controller_adam_eps")
_FRACTIONS = ("controller_adam_b1", "controller_adam_b2", "controller_baseline_decay")


def check_search_config(config, device_count: int) -> None:
    """Raises ConfigError naming the first bad field of a resolved search config."""
    search = config.search
    if search.strategy not in ("enas", "random"):
        raise ConfigError(f"config.search.strategy: {search.strategy!r} is not 'enas' (the controller learns) or "
                          "'random' (uniform arcs, the baseline)")
    if config.ema_decay is not None:
        raise ConfigError("config.ema_decay: a search keeps no parameter EMA (its rewards read the shared weights "
                          "as they are); leave it None")
    test_split = dataset_spec(config.dataset).eval_split
    if config.eval_split.split("[")[0] == test_split:
        raise ConfigError(
            f"config.eval_split={config.eval_split!r}: a search takes its rewards and picks its arc on eval_split, "
            f"which must be held out of the training split, never the test split; leave it unset (the last "
            f"{100 - SEARCH_TRAIN_PERCENT}% of the training split)"
        )
    if config.audio.eval_crops != 1 and dataset_spec(config.dataset).family == "audio":
        raise ConfigError(f"config.audio.eval_crops={config.audio.eval_crops}: a search scores its arcs on one crop "
                          "per clip; leave it 1 (its final_config.py may evaluate on several)")
    for field in _POSITIVE_INTS:
        value = search[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"config.search.{field} must be a positive int, got {value!r}")
    for field in _POSITIVE_FLOATS:
        if not (is_real(search[field]) and search[field] > 0):
            raise ConfigError(f"config.search.{field} must be > 0, got {search[field]!r}")
    for field in _FRACTIONS:
        if not (is_real(search[field]) and 0.0 <= search[field] < 1.0):
            raise ConfigError(f"config.search.{field} must be in [0, 1), got {search[field]!r}")
    if not (is_real(search.controller_skip_target) and 0.0 < search.controller_skip_target < 1.0):
        raise ConfigError(f"config.search.controller_skip_target must be in (0, 1), got "
                          f"{search.controller_skip_target!r}")
    for field in ("controller_entropy_weight", "controller_skip_weight"):
        if not (is_real(search[field]) and search[field] >= 0):
            raise ConfigError(f"config.search.{field} must be >= 0, got {search[field]!r}")
    for field in ("controller_temperature", "controller_tanh_constant", "controller_grad_clip_norm"):
        if search[field] is not None and not (is_real(search[field]) and search[field] > 0):
            raise ConfigError(f"config.search.{field} must be None or > 0, got {search[field]!r}")
    if not isinstance(search.final, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f"config.search.final must be a section of fields (those of final_config.py that differ "
                          f"from base_config()), got {search.final!r}")
    _check_final_recipe(config)
    batch = search.controller_batch_size
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0 or batch % device_count:
        raise ConfigError(f"config.search.controller_batch_size={batch!r} is not a positive multiple of the "
                          f"{device_count} devices; use a multiple of {device_count}")


def _check_final_recipe(config) -> None:
    """The recipe final_config.py will be, checked now rather than after the search (on one device: the arc is
    retrained wherever the user runs it)."""
    model = create_model(config.model, **config.model_overrides.to_dict())
    arc = format_arc(default_arc(model.num_layers, model.num_branches, model.whole_channels, model.num_filters))
    try:
        resolve_config(final_config(config, model, arc), device_count=1)
    except (ConfigError, AttributeError, KeyError, TypeError) as e:
        message = str(e).strip("'\"")
        if not message.startswith("config.search.final"):
            message = f"config.search.final: {message.removeprefix('config.')}"
        raise ConfigError(message) from None
