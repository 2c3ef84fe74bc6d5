"""Checks a resolved config before anything compiles: one line that names the field and says what to do."""

from __future__ import annotations

import jax

from jaxnets.errors import ConfigError
from jaxnets.models import COMPUTE_DTYPES, create_model, layers, list_models
from jaxnets.train.config import SEARCH_TRAIN_PERCENT

# Models that the classification task cannot train as they are, and what to use instead.
_NOT_CLASSIFIABLE = {
    "enas_macro_shared": (
        "is the ENAS search space (shared weights; the architecture is an input of every step), which supervised "
        "training cannot train as one network: to train one architecture use --config.model=enas_macro with "
        "--config.model_overrides.arc='...' (configs/enas_macro_final_cifar10.py trains the published one)"
    ),
}


def check_config(config, device_count: int | None = None) -> None:
    """Raises ConfigError naming the first bad field of a resolved config (`resolve_config` calls this)."""
    from jaxnets.optim import check_optim_config
    from jaxnets.train.trainer import TASKS

    device_count = jax.device_count() if device_count is None else device_count
    if config.task not in TASKS:
        raise ConfigError(f"config.task: unknown task {config.task!r}; known: {', '.join(TASKS)}")
    if config.model not in list_models():
        raise ConfigError(f"config.model: unknown model {config.model!r}; known: {', '.join(list_models())}")
    if config.task == "search" and config.model != "enas_macro_shared":
        raise ConfigError(f"config.model: the search task trains the ENAS search space 'enas_macro_shared', "
                          f"not {config.model!r}")
    if config.task == "classification" and config.model in _NOT_CLASSIFIABLE:
        raise ConfigError(f"config.model: {config.model!r} {_NOT_CLASSIFIABLE[config.model]}")
    try:
        model = create_model(config.model, **config.model_overrides.to_dict())
    except ValueError as e:
        raise ConfigError(f"config.model_overrides: {e}") from None
    if "arc" in config.model_overrides and isinstance(config.model_overrides.arc, str):
        _check_arc(config.model_overrides.arc, model)
    if config.dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"config.dtype: {config.dtype!r} is not one of {tuple(COMPUTE_DTYPES)}")
    try:
        with layers.conv_lowering(config.conv_lowering):
            layers.resolve_lowering(platform="cpu")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for field in ("global_batch_size", "eval_batch_size"):
        value = config[field]
        if value <= 0 or value % device_count:
            raise ConfigError(
                f"config.{field}={value} is not a positive multiple of the {device_count} devices; "
                f"use a multiple of {device_count}"
            )
    if config.num_epochs <= 0:
        raise ConfigError(f"config.num_epochs must be > 0, got {config.num_epochs}")
    if config.ema_decay is not None and not 0.0 < config.ema_decay < 1.0:
        raise ConfigError(f"config.ema_decay must be in (0, 1), got {config.ema_decay}")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ConfigError(f"config.label_smoothing must be in [0, 1), got {config.label_smoothing}")
    if config.skip_nonfinite_steps < 0:
        raise ConfigError(f"config.skip_nonfinite_steps must be >= 0, got {config.skip_nonfinite_steps}")
    for field in ("checkpoint_every_steps", "max_to_keep", "log_every_steps", "steps_per_dispatch"):
        if config[field] < 1:
            raise ConfigError(f"config.{field} must be >= 1, got {config[field]}")
    if config.eval_every_epochs <= 0:
        raise ConfigError(f"config.eval_every_epochs must be > 0, got {config.eval_every_epochs}")
    try:
        check_optim_config(config)  # (the data fields were checked while resolving them)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.task == "search":
        _check_search(config, device_count)


def _check_arc(arc: str, model) -> None:
    from jaxnets.models.enas import parse_arc

    try:
        parse_arc(arc, model.num_layers, model.num_branches, model.whole_channels)
    except ValueError as e:
        raise ConfigError(f"config.model_overrides.arc: {e}") from None


_SEARCH_POSITIVE_INTS = ("controller_lstm_size", "controller_updates_per_epoch", "controller_arcs_per_update",
                         "search_eval_arcs", "search_final_arcs")
_SEARCH_POSITIVE_FLOATS = ("controller_learning_rate", "controller_adam_eps")
_SEARCH_FRACTIONS = ("controller_adam_b1", "controller_adam_b2", "controller_baseline_decay")


def _check_search(config, device_count: int) -> None:
    from jaxnets.data import dataset_spec

    if config.search_strategy not in ("enas", "random"):
        raise ConfigError(f"config.search_strategy: {config.search_strategy!r} is not 'enas' (the controller "
                          "learns) or 'random' (uniform arcs, the baseline)")
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
    for field in _SEARCH_POSITIVE_INTS:
        value = config[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"config.{field} must be a positive int, got {value!r}")
    for field in _SEARCH_POSITIVE_FLOATS:
        if not config[field] > 0:
            raise ConfigError(f"config.{field} must be > 0, got {config[field]!r}")
    for field in _SEARCH_FRACTIONS:
        if not 0.0 <= config[field] < 1.0:
            raise ConfigError(f"config.{field} must be in [0, 1), got {config[field]!r}")
    if not 0.0 < config.controller_skip_target < 1.0:
        raise ConfigError(f"config.controller_skip_target must be in (0, 1), got {config.controller_skip_target!r}")
    for field in ("controller_entropy_weight", "controller_skip_weight"):
        if config[field] < 0:
            raise ConfigError(f"config.{field} must be >= 0, got {config[field]!r}")
    for field in ("controller_temperature", "controller_tanh_constant", "controller_grad_clip_norm"):
        if config[field] is not None and not config[field] > 0:
            raise ConfigError(f"config.{field} must be None or > 0, got {config[field]!r}")
    _check_final_recipe(config)
    batch = config.controller_batch_size
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0 or batch % device_count:
        raise ConfigError(f"config.controller_batch_size={batch!r} is not a positive multiple of the {device_count} "
                          f"devices; use a multiple of {device_count}")


def _check_final_recipe(config) -> None:
    """The recipe final_config.py will be, checked now rather than after the search (on one device: the arc is
    retrained wherever the user runs it)."""
    from jaxnets.models.enas import default_arc, format_arc
    from jaxnets.nas.final import final_config
    from jaxnets.train.config import resolve_config

    model = create_model(config.model, **config.model_overrides.to_dict())
    arc = format_arc(default_arc(model.num_layers, model.num_branches, model.whole_channels, model.num_filters))
    try:
        resolve_config(final_config(config, model, arc), device_count=1)
    except (ConfigError, AttributeError, KeyError, TypeError) as e:
        message = str(e).strip("'\"")
        if not message.startswith("config.final"):
            message = f"config.final: {message.removeprefix('config.')}"
        raise ConfigError(message) from None
