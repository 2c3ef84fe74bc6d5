"""Learning-rate schedules: step (int, any shape) -> lr (float32), jit-safe, built from the flat config.

Steps count from 0 and an epoch is `steps_per_epoch` steps; epoch counts in the config are rounded to
the nearest step. The horizon of the cosine decay is `num_epochs`, never `num_train_steps`: capping a
smoke test's steps must not change the learning rates it sees.

A linear warm-up (`warmup_epochs`) replaces the start of every schedule but sgdr: lr = peak * step / W
for step < W, so step 0 runs at 0 (as optax's and the seed recipe's warm-up do) and the peak is reached
at step W. Milestones (staircase, multistep) stay absolute (steps or epochs, counted from step 0); cosine
decays over what follows the warm-up.
"""

import math
import numbers

import jax.numpy as jnp
import optax

from jaxnets.optim.config import check_optim_config


def _steps(epochs: float, steps_per_epoch: int) -> int:
    return math.floor(epochs * steps_per_epoch + 0.5)


def _constant(config, steps_per_epoch: int, warmup_steps: int) -> optax.Schedule:
    lr = config["learning_rate"]
    return lambda step: jnp.full(jnp.shape(step), lr, jnp.float32)


def _staircase(config, steps_per_epoch: int, warmup_steps: int) -> optax.Schedule:
    # ENAS: lr_init * rate^floor(max(step - start, 0) / every), in steps; `min_learning_rate` is its lr_dec_min.
    # `lr_decay_every_epochs`, when set, gives `every` in epochs (torchvision's StepLR), so that it follows
    # the batch size and the dataset.
    lr, floor = config["learning_rate"], config["min_learning_rate"]
    start, rate = config["lr_decay_start_steps"], config["lr_decay_rate"]
    every = config["lr_decay_every_steps"]
    if config["lr_decay_every_epochs"] is not None:
        every = max(_steps(config["lr_decay_every_epochs"], steps_per_epoch), 1)

    def schedule(step):
        decays = jnp.maximum(step - start, 0) // every
        return jnp.maximum(lr * jnp.power(jnp.float32(rate), decays.astype(jnp.float32)), floor)

    return schedule


def _multistep(config, steps_per_epoch: int, warmup_steps: int) -> optax.Schedule:
    # lr * factor^(number of milestones reached); milestones are absolute epochs (warm-up included).
    lr, factor = config["learning_rate"], config["lr_decay_factor"]
    milestones = jnp.array([_steps(e, steps_per_epoch) for e in config["lr_decay_epochs"]], jnp.int32)
    values = jnp.array([lr * factor**i for i in range(len(milestones) + 1)], jnp.float32)
    return lambda step: values[jnp.searchsorted(milestones, step, side="right")]


def _cosine(config, steps_per_epoch: int, warmup_steps: int) -> optax.Schedule:
    # From the peak at the end of the warm-up to `min_learning_rate` at num_epochs, then flat.
    peak, end = config["learning_rate"], config["min_learning_rate"]
    decay_steps = max(_steps(config["num_epochs"], steps_per_epoch) - warmup_steps, 1)

    def schedule(step):
        progress = jnp.clip(step - warmup_steps, 0, decay_steps).astype(jnp.float32) / decay_steps
        return peak - (peak - end) * 0.5 * (1 - jnp.cos(jnp.pi * progress))  # exactly `peak` at progress 0

    return schedule


def _sgdr(config, steps_per_epoch: int, warmup_steps: int) -> optax.Schedule:
    # ENAS's SGDR (Loshchilov & Hutter with whole-epoch steps): within cycle i of T_i = T_0 * T_mul^i epochs,
    # at epoch t_cur of it, lr = lr_min + (lr_max - lr_min) * (1 + cos(pi * t_cur / T_i)) / 2, constant within
    # an epoch. T_0=10, T_mul=2 restarts at epochs 10, 30, 70, 150, 310. lr_min itself is never reached
    # (the last epoch of a cycle has t_cur = T_i - 1). The official code's pi was 3.1415926; ours is exact.
    lr_max, lr_min = config["learning_rate"], config["min_learning_rate"]
    t0, t_mul = config["sgdr_t0_epochs"], config["sgdr_t_mul"]
    # Cycle starts (epochs) up to the last epoch an int32 step can reach: at most 31 cycles for T_mul >= 2.
    starts, lengths = [0], [t0]
    while t_mul > 1 and starts[-1] + lengths[-1] <= (2**31 - 1) // steps_per_epoch:
        starts.append(starts[-1] + lengths[-1])
        lengths.append(lengths[-1] * t_mul)
    starts_arr, lengths_arr = jnp.array(starts, jnp.int32), jnp.array(lengths, jnp.float32)

    def schedule(step):
        epoch = step // steps_per_epoch
        if t_mul == 1:
            t_cur, t_i = epoch % t0, float(t0)
        else:
            cycle = jnp.searchsorted(starts_arr, epoch, side="right") - 1
            t_cur, t_i = epoch - starts_arr[cycle], lengths_arr[cycle]
        # Written from lr_max down, so a restart gives exactly lr_max.
        return lr_max - (lr_max - lr_min) * 0.5 * (1 - jnp.cos(jnp.pi * t_cur.astype(jnp.float32) / t_i))

    return schedule


_BUILDERS = {
    "constant": _constant,
    "staircase": _staircase,
    "multistep": _multistep,
    "cosine": _cosine,
    "sgdr": _sgdr,
}


def create_schedule(config, steps_per_epoch: int) -> optax.Schedule:
    """The config's schedule as `step -> lr` (float32 array of the step's shape)."""
    check_optim_config(config)
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, numbers.Integral) or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
    steps_per_epoch = int(steps_per_epoch)
    warmup_steps = _steps(config["warmup_epochs"], steps_per_epoch)
    main = _BUILDERS[config["schedule"]](config, steps_per_epoch, warmup_steps)
    peak = config["learning_rate"]

    def schedule(step):
        step = jnp.asarray(step)
        lr = main(step)
        if warmup_steps:
            lr = jnp.where(step < warmup_steps, peak * step.astype(jnp.float32) / warmup_steps, lr)
        return lr.astype(jnp.float32)

    return schedule
