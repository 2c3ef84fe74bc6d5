"""Checks a resolved config before anything compiles: one line that names the field and says what to do."""

from __future__ import annotations

from jaxnets.errors import ConfigError
from jaxnets.models import COMPUTE_DTYPES, create_model, layers, list_models
from jaxnets.optim import check_optim_config


def check_config(config, device_count: int) -> None:
    """Raises ConfigError naming the first bad field of a resolved config, for the fields of every task
    (`resolve_config` calls this, then the task's own check)."""
    if config.model not in list_models():
        raise ConfigError(f"config.model: unknown model {config.model!r}; known: {', '.join(list_models())}")
    try:
        create_model(config.model, **config.model_overrides.to_dict())
    except (ValueError, TypeError) as e:  # (TypeError: a field the model does not have)
        raise ConfigError(f"config.model_overrides: {e}") from None
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
