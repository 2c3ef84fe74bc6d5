"""`train_and_evaluate(config, workdir)`: the whole run, host side. The jitted steps stay pure."""

from __future__ import annotations

import functools
import json
import logging
import math

import jax
import jax.numpy as jnp

from jaxnets.models import create_model_from_config
from jaxnets.train import checkpoint, parallel, steps
from jaxnets.train.reporting import Reporter
from jaxnets.train.signals import StopSignals
from jaxnets.train.state import TrainState, create_train_state
from jaxnets.train.validate import ConfigError, check_config

log = logging.getLogger("jaxnets")


class NonFiniteLossError(FloatingPointError):
    """A step's loss, gradient norm or updated-parameter norm is NaN or Inf (beyond config.skip_nonfinite_steps)."""


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains `config` in `workdir`, resuming from its newest good checkpoint; returns the final eval metrics."""
    from jaxnets import data  # TensorFlow is imported here, not when jaxnets.train is
    from jaxnets.optim import create_optimizer, create_schedule

    check_config(config)  # before anything compiles
    checkpoint.check_writable(workdir)
    mesh = parallel.create_mesh()
    process_index, process_count = jax.process_index(), jax.process_count()
    info = data.dataset_info(config)
    steps_per_epoch = info.num_train_examples // config.global_batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"config.global_batch_size={config.global_batch_size} exceeds the {info.num_train_examples} "
            f"training examples of {config.dataset}"
        )
    total_steps = config.num_epochs * steps_per_epoch
    if config.num_train_steps > 0:
        total_steps = min(total_steps, config.num_train_steps)
    eval_every = max(1, round(config.eval_every_epochs * steps_per_epoch))

    model = create_model_from_config(config, info.num_classes)
    schedule = create_schedule(config, steps_per_epoch)
    tx = create_optimizer(config, steps_per_epoch)
    init = functools.partial(create_train_state, model, tx, info.image_shape, config.seed, config.ema_decay is not None)
    replicated = parallel.replicated(mesh)
    # What a checkpoint holds besides the state: enough for a notebook to rebuild the model.
    meta = {"config": json.loads(config.to_json()), "num_classes": info.num_classes,
            "image_shape": list(info.image_shape)}
    checkpoints = checkpoint.Checkpoints(workdir, max_to_keep=config.max_to_keep, keep_best=config.keep_best,
                                         is_main_process=process_index == 0)
    try:
        state = _initial_state(config, meta, checkpoints, init, replicated)  # restores before compiling
    except BaseException:
        checkpoints.close()
        raise
    train_step = parallel.data_parallel_train_step(
        functools.partial(steps.train_step, model=model, tx=tx, schedule=schedule, config=config), mesh
    )
    eval_step = parallel.data_parallel_eval_step(functools.partial(steps.eval_step, model=model), mesh)

    eval_batches = data.eval_batches(config, config.eval_batch_size // process_count, process_index=process_index,
                                     process_count=process_count)

    def evaluate(state: TrainState) -> dict:
        totals = None
        for batch in eval_batches:
            sums = eval_step(state, parallel.device_batch(batch, mesh))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        count = float(totals["count"])
        return {"eval_loss": float(totals["loss"]) / count, "eval_top1": float(totals["top1"]) / count,
                "eval_top5": float(totals["top5"]) / count, "eval_examples": count}

    start_step = int(state.step)
    reporter = Reporter(workdir, total_steps, steps_per_epoch, config.global_batch_size,
                        is_main_process=process_index == 0, start_step=start_step)
    log.info("%s on %s: %d steps (%d per epoch), global batch %d over %d devices", config.model, config.dataset,
             total_steps, steps_per_epoch, config.global_batch_size, mesh.size)
    batches = parallel.prefetch_to_device(
        data.train_iterator(config, config.global_batch_size // process_count, start_step=start_step,
                            process_index=process_index, process_count=process_count),
        mesh,
    )

    skipped_in_a_row = 0

    def finish(step: int, metrics) -> None:
        """Reads a dispatched step's metrics (blocks only on that step); stops at a non-finite loss or update."""
        nonlocal skipped_in_a_row
        metrics = jax.device_get(metrics)  # one transfer of a few scalars
        non_finite = _first_non_finite(metrics)
        if non_finite:
            name, value = non_finite
            skipped_in_a_row += 1
            if skipped_in_a_row > config.skip_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{name} is {value} at step {step}: the run stops here (lower config.learning_rate, set "
                    "config.grad_clip_norm, or allow config.skip_nonfinite_steps)"
                )
            log.warning("step %d: %s is %s; its update is discarded (%d of config.skip_nonfinite_steps=%d in a row)",
                        step, name, value, skipped_in_a_row, config.skip_nonfinite_steps)
        else:
            skipped_in_a_row = 0
        if step % config.log_every_steps == 0 or step == total_steps:
            reporter.progress(step, {f"train_{k}": v for k, v in metrics.items()})

    eval_metrics: dict = {}
    pending = None
    try:
        with StopSignals() as stop:
            for step in range(start_step + 1, total_steps + 1):
                state, metrics = train_step(state, next(batches))  # dispatch step t ...
                if pending is not None:
                    finish(*pending)  # ... then read step t-1's metrics while t runs
                pending = (step, metrics)
                evaluating = step % eval_every == 0 or step == total_steps
                saving = step % config.checkpoint_every_steps == 0 or step == total_steps or stop.requested
                if evaluating or saving:
                    finish(*pending)  # a state is saved only once its loss and update are known finite
                    pending = None
                if evaluating:
                    eval_metrics = evaluate(state)
                    reporter.write(step, eval_metrics)
                    log.info("step %d  eval top-1 %.4f  top-5 %.4f  loss %.4f", step, eval_metrics["eval_top1"],
                             eval_metrics["eval_top5"], eval_metrics["eval_loss"])
                if saving:  # asynchronous: orbax copies the state to host memory, then writes it in a thread
                    checkpoints.save(step, state, meta, eval_metrics if evaluating else None)
                if stop.requested:
                    log.warning("%s: saved step %d, stopping", stop.requested, step)
                    break
    finally:
        checkpoints.close()  # waits for the saves in flight
        reporter.close()
    return eval_metrics


def _first_non_finite(metrics) -> tuple[str, float] | None:
    """The first of a step's loss, gradient norm and updated-parameter norm that is NaN or Inf, with its value."""
    for name, key in (("loss", "loss"), ("gradient norm", "grad_norm"), ("parameter norm", "param_norm")):
        value = float(metrics[key])
        if not math.isfinite(value):
            return name, value
    return None


def _initial_state(config, meta: dict, checkpoints: checkpoint.Checkpoints, init, sharding) -> TrainState:
    """The workdir's newest good checkpoint, else a fresh state (with `config.init_from`'s parameters)."""
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), jax.eval_shape(init))
    restored = checkpoints.restore_latest(abstract, meta["config"])
    if restored is not None:
        step, state = restored
        log.info("resuming from %s at step %d", checkpoints.directory, step)
        return state
    state = jax.jit(init, out_shardings=sharding)()
    if config.init_from:
        from jaxnets.checkpoint_loading import read_meta, resolve_step_dir, restore_variables

        step_dir = resolve_step_dir(config.init_from)
        differing = checkpoint.model_differences(read_meta(step_dir)["config"], meta["config"])
        if differing:
            raise checkpoint.IncompatibleCheckpointError(
                f"config.init_from: {step_dir} is of another model (differs in {', '.join(differing)})"
            )
        loaded = restore_variables(step_dir, sharding)
        state = state.replace(params=loaded["params"], batch_stats=loaded["batch_stats"],
                              ema_params=None if state.ema_params is None else loaded["params"])
        log.info("parameters and BN statistics from %s; step, optimizer and rng start afresh", step_dir)
    return state
