"""Learning-rate schedules: step (int, any shape) -> lr (float32), jit-safe, built from the flat config.

Steps count from 0 and an epoch is `steps_per_epoch` steps; epoch counts in the config are rounded to
the nearest step. The horizon of the cosine decay is `num_epochs`, never `num_train_steps`: capping a
smoke test's steps must not change the learning rates it sees.

A linear warm-up (`warmup_epochs`) replaces the start of every schedule but sgdr: lr = peak * step / W
for step < W, so step 0 runs at 0 (as optax's and the seed recipe's warm-up do) and the peak is reached
at step W. Milestones (staircase, multistep) stay absolute (steps or epochs, counted from step 0); cosine
decays over what follows the warm-up.

Rates are PyTorch's to the last bit of float32: every rate that is not a power of a factor (the warm-up's ramp,
the cosine's and SGDR's curves) comes from a table computed once in float64 and rounded once, as PyTorch's
float64 schedulers are rounded when a float32 kernel reads them. A curve longer than MAX_TABLE entries falls back
to float32 arithmetic (within 4e-7 of itself).
"""

import math
import numbers

import jax.numpy as jnp
import numpy as np
import optax

from jaxnets.optim.config import check_optim_config

# Entries of a float64-computed table of rates (4 MiB as float32): a cosine over up to ~1M steps, an ImageNet run's
# 450k included; longer curves are computed in float32 instead.
MAX_TABLE = 1 << 20


def _steps(epochs: float, steps_per_epoch: int) -> int:
    return math.floor(epochs * steps_per_epoch + 0.5)


def _table(values: np.ndarray) -> np.ndarray:
    """Float64 rates rounded once to float32, for a lookup (kept in numpy: a jax array here would be placed on a
    device, which compiles, when a schedule is built; traced, the table becomes a constant of the program)."""
    return np.asarray(values, np.float64).astype(np.float32)


def _cosine_values(start: float, end: float, done: np.ndarray, total) -> np.ndarray:
    """start + (end - start) * (1 - cos(pi * done / total)) / 2 in float64 (PyTorch's CosineAnnealingLR)."""
    return end + (start - end) * (1 + np.cos(np.pi * np.asarray(done, np.float64) / total)) / 2


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

    # The rates computed once in float64 (float32's pow is 4.7e-7 off), as far as they change: a table of at most
    # 1,000 entries, ending on the floor when a decaying schedule reaches it; past the table, pow.
    table = [lr]
    while rate < 1 and len(table) < 1000 and table[-1] > floor:
        table.append(max(lr * rate ** len(table), floor))
    reaches_floor = table[-1] <= floor
    rates = jnp.array(table, jnp.float32)

    def schedule(step):
        decays = jnp.maximum(step - start, 0) // every
        if reaches_floor:
            return rates[jnp.minimum(decays, len(table) - 1)]
        beyond = jnp.maximum(lr * jnp.power(jnp.float32(rate), decays.astype(jnp.float32)), floor)
        return jnp.where(decays < len(table), rates[jnp.minimum(decays, len(table) - 1)], beyond)

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

    table = _table(_cosine_values(peak, end, np.arange(decay_steps + 1), decay_steps)) \
        if decay_steps < MAX_TABLE else None

    def schedule(step):
        done = jnp.clip(step - warmup_steps, 0, decay_steps)
        if table is not None:
            return jnp.asarray(table)[done]
        return _cosine_from_to(peak, end, done, decay_steps)  # exactly `peak` at 0

    return schedule


def _cosine_from_to(start, end, done, total):
    """start + (end - start) * (1 - cos(pi * done / total)) / 2, float32, `done` and `total` whole numbers (curves
    too long for a table).

    The cosine as the square of a half angle's sine, from whichever end is nearer: float32 then holds every value
    to 3.4e-7 of itself (against torch's float64 CosineAnnealingLR over 1,000 steps), where the textbook form
    was 6.7e-5 off near the end (the cosine's round-off is absolute, the rate small)."""
    done, total = jnp.asarray(done).astype(jnp.float32), jnp.asarray(total, jnp.float32)
    half_pi = jnp.float32(math.pi / 2)
    near_start = start - (start - end) * jnp.square(jnp.sin(half_pi * (done / total)))
    near_end = end + (start - end) * jnp.square(jnp.sin(half_pi * ((total - done) / total)))
    return jnp.where(2 * done <= total, near_start, near_end)


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
    # Each epoch's rate in float64 up to the end of the cycle that holds num_epochs (a run never goes further).
    last_epoch = math.ceil(config["num_epochs"])
    cycle_ends = np.cumsum(lengths)
    tabulated = int(cycle_ends[np.searchsorted(cycle_ends, last_epoch, side="right")]) if t_mul > 1 else \
        (last_epoch // t0 + 1) * t0
    table = None
    if tabulated <= MAX_TABLE:
        epochs = np.arange(tabulated)
        if t_mul == 1:
            t_cur, t_i = epochs % t0, float(t0)
        else:
            cycles = np.searchsorted(starts, epochs, side="right") - 1
            t_cur, t_i = epochs - np.asarray(starts)[cycles], np.asarray(lengths, np.float64)[cycles]
        table = _table(_cosine_values(lr_max, lr_min, t_cur, t_i))

    def schedule(step):
        epoch = step // steps_per_epoch
        if t_mul == 1:
            t_cur, t_i = epoch % t0, float(t0)
        else:
            cycle = jnp.searchsorted(starts_arr, epoch, side="right") - 1
            t_cur, t_i = epoch - starts_arr[cycle], lengths_arr[cycle]
        computed = _cosine_from_to(lr_max, lr_min, t_cur, t_i)  # (a restart gives exactly lr_max)
        if table is None:
            return computed
        return jnp.where(epoch < tabulated, jnp.asarray(table)[jnp.minimum(epoch, tabulated - 1)], computed)

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

    ramp = _table(peak * np.arange(warmup_steps) / warmup_steps) if 0 < warmup_steps <= MAX_TABLE else None

    def schedule(step):
        step = jnp.asarray(step)
        lr = main(step)
        if ramp is not None:
            lr = jnp.where(step < warmup_steps, jnp.asarray(ramp)[jnp.clip(step, 0, warmup_steps - 1)], lr)
        elif warmup_steps:
            lr = jnp.where(step < warmup_steps, peak * step.astype(jnp.float32) / warmup_steps, lr)
        return lr.astype(jnp.float32)

    return schedule
