"""Validation of the optimisation fields of the flat training config (their defaults: `jaxnets.train.base_config`).

`check_optim_config` runs before anything compiles and raises one `ValueError` line naming the field.
"""

import numbers

SCHEDULES = ("constant", "staircase", "multistep", "cosine", "sgdr")
OPTIMIZERS = ("sgd", "rmsprop", "adam", "adamw")
# l2_loss: ENAS/TF, `weight_decay * sum(w^2)` added to the loss (gradient 2 * weight_decay * w).
# coupled: torch.optim's `weight_decay`, `weight_decay * w` added to the gradient before the optimizer
#   (for SGD the same update as l2_loss at half the value, but the reported loss stays the data loss).
# decoupled: Loshchilov & Hutter (AdamW, SGDW), `lr * weight_decay * w` added after the optimizer.
WEIGHT_DECAY_MODES = ("l2_loss", "coupled", "decoupled")


def _fail(name: str, requirement: str, value) -> None:
    raise ValueError(f"config.{name} {requirement}, got {value!r}")


def _number(config, name: str, *, integer: bool = False):
    value = config[name]
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        _fail(name, "must be an integer" if integer else "must be a number", value)
    return value


def _check(config, name: str, ok, requirement: str, *, integer: bool = False):
    value = _number(config, name, integer=integer)
    if not ok(value):
        _fail(name, requirement, value)
    return value


def _one_of(config, name: str, known: tuple[str, ...]) -> str:
    value = config[name]
    if value not in known:
        _fail(name, "must be one of " + ", ".join(map(repr, known)), value)
    return value


def _optional_positive(config, name: str) -> None:
    if config[name] is not None:
        _check(config, name, lambda v: v > 0, "must be None or > 0")


def check_optim_config(config) -> None:
    """Raise a one-line ValueError naming the first bad optimisation field of `config`."""
    optimizer = _one_of(config, "optimizer", OPTIMIZERS)
    _check(config, "momentum", lambda v: 0 <= v < 1, "must be in [0, 1)")
    if not isinstance(config["nesterov"], bool):
        _fail("nesterov", "must be a bool", config["nesterov"])
    if config["nesterov"] and optimizer in ("sgd", "rmsprop") and config["momentum"] == 0:
        _fail("nesterov", "needs config.momentum > 0", True)
    _check(config, "rmsprop_decay", lambda v: 0 <= v < 1, "must be in [0, 1)")
    _check(config, "rmsprop_epsilon", lambda v: v >= 0, "must be >= 0")
    _check(config, "adam_b1", lambda v: 0 <= v < 1, "must be in [0, 1)")
    _check(config, "adam_b2", lambda v: 0 <= v < 1, "must be in [0, 1)")
    _check(config, "adam_eps", lambda v: v >= 0, "must be >= 0")

    if config["learning_rate"] is None:
        _fail("learning_rate", "is required", None)
    lr = _check(config, "learning_rate", lambda v: v > 0, "must be > 0")
    schedule = _one_of(config, "schedule", SCHEDULES)
    warmup = _check(config, "warmup_epochs", lambda v: v >= 0, "must be >= 0")
    num_epochs = config["num_epochs"]
    if num_epochs is not None or schedule == "cosine":
        if num_epochs is None:
            _fail("num_epochs", "is required by schedule 'cosine' (it sets the decay horizon)", None)
        num_epochs = _check(config, "num_epochs", lambda v: v > 0, "must be > 0")
        if warmup >= num_epochs:
            _fail("warmup_epochs", f"must be shorter than config.num_epochs ({num_epochs!r})", warmup)
    if schedule in ("staircase", "cosine", "sgdr"):
        _check(config, "min_learning_rate", lambda v: 0 <= v <= lr, f"must be in [0, config.learning_rate={lr!r}]")
    if schedule == "staircase":
        _check(config, "lr_decay_start_steps", lambda v: v >= 0, "must be >= 0", integer=True)
        if config["lr_decay_every_epochs"] is None:
            _check(config, "lr_decay_every_steps", lambda v: v > 0, "must be > 0", integer=True)
        else:
            _check(config, "lr_decay_every_epochs", lambda v: v > 0, "must be None or > 0")
        _check(config, "lr_decay_rate", lambda v: v > 0, "must be > 0")
    elif schedule == "multistep":
        epochs = config["lr_decay_epochs"]
        if (
            not isinstance(epochs, (tuple, list))
            or not epochs
            or not all(isinstance(e, numbers.Real) and not isinstance(e, bool) for e in epochs)
            or epochs[0] <= 0
            or any(a >= b for a, b in zip(epochs, epochs[1:], strict=False))
        ):
            _fail("lr_decay_epochs", "must be a non-empty, strictly increasing sequence of epochs > 0", epochs)
        _check(config, "lr_decay_factor", lambda v: v > 0, "must be > 0")
    elif schedule == "sgdr":
        if warmup != 0:
            _fail("warmup_epochs", "must be 0 with schedule 'sgdr' (each cycle restarts at the peak)", warmup)
        _check(config, "sgdr_t0_epochs", lambda v: v >= 1, "must be >= 1", integer=True)
        _check(config, "sgdr_t_mul", lambda v: v >= 1, "must be >= 1", integer=True)

    _check(config, "weight_decay", lambda v: v >= 0, "must be >= 0")
    mode = _one_of(config, "weight_decay_mode", WEIGHT_DECAY_MODES)
    if optimizer == "adamw" and mode != "decoupled":
        _fail("weight_decay_mode", "must be 'decoupled' with optimizer 'adamw'", mode)
    if not isinstance(config["weight_decay_exclude_bn_and_bias"], bool):
        _fail("weight_decay_exclude_bn_and_bias", "must be a bool", config["weight_decay_exclude_bn_and_bias"])
    _optional_positive(config, "grad_clip_norm")
    _optional_positive(config, "grad_clip_per_tensor")
