"""`train_and_evaluate(config, workdir)`: the whole run, host side. The jitted steps stay pure."""

from __future__ import annotations

import functools
import logging
import math
import os

import jax
import jax.numpy as jnp

from jaxnets.models import create_model
from jaxnets.train import parallel, steps
from jaxnets.train.reporting import Reporter
from jaxnets.train.state import TrainState, create_train_state
from jaxnets.train.validate import check_config

log = logging.getLogger("jaxnets")


class NonFiniteLossError(FloatingPointError):
    pass


def build_model(config, num_classes: int):
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.dtype]
    return create_model(config.model, num_classes=num_classes, dtype=dtype, **config.model_overrides.to_dict())


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains `config` in `workdir`; returns the final eval metrics."""
    from jaxnets import data  # TensorFlow is imported here, not when jaxnets.train is
    from jaxnets.optim import create_optimizer, create_schedule

    check_config(config)  # before anything compiles
    os.makedirs(workdir, exist_ok=True)
    mesh = parallel.create_mesh()
    process_index, process_count = jax.process_index(), jax.process_count()
    info = data.dataset_info(config)
    steps_per_epoch = info.num_train_examples // config.global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"config.global_batch_size={config.global_batch_size} exceeds the {info.num_train_examples} "
            f"training examples of {config.dataset}"
        )
    total_steps = config.num_epochs * steps_per_epoch
    if config.num_train_steps > 0:
        total_steps = min(total_steps, config.num_train_steps)
    eval_every = max(1, round(config.eval_every_epochs * steps_per_epoch))

    model = build_model(config, info.num_classes)
    schedule = create_schedule(config, steps_per_epoch)
    tx = create_optimizer(config, steps_per_epoch)
    init = functools.partial(create_train_state, model, tx, info.image_shape, config.seed, config.ema_decay is not None)
    state = jax.jit(init, out_shardings=parallel.replicated(mesh))()
    train_step = parallel.data_parallel_train_step(
        functools.partial(steps.train_step, model=model, tx=tx, schedule=schedule, config=config), mesh
    )
    eval_step = parallel.data_parallel_eval_step(functools.partial(steps.eval_step, model=model), mesh)

    def evaluate(state: TrainState) -> dict:
        local_batch = config.eval_batch_size // process_count
        totals = None
        for batch in data.eval_iterator(config, local_batch, process_index=process_index, process_count=process_count):
            sums = eval_step(state, parallel.device_batch(batch, mesh))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        count = float(totals["count"])
        return {"eval_loss": float(totals["loss"]) / count, "eval_top1": float(totals["top1"]) / count,
                "eval_top5": float(totals["top5"]) / count, "eval_examples": count}

    reporter = Reporter(workdir, total_steps, steps_per_epoch, config.global_batch_size, process_index == 0)
    start_step = int(state.step)
    log.info("%s on %s: %d steps (%d per epoch), global batch %d over %d devices", config.model, config.dataset,
             total_steps, steps_per_epoch, config.global_batch_size, mesh.size)
    batches = parallel.prefetch_to_device(
        data.train_iterator(config, config.global_batch_size // process_count, start_step=start_step,
                            process_index=process_index, process_count=process_count),
        mesh,
    )

    def finish(step: int, metrics) -> None:
        """Reads a dispatched step's metrics (blocks only on that step)."""
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss} at step {step}: the run stops here (lower config.learning_rate, or set "
                "config.grad_clip_norm)"
            )
        if step % config.log_every_steps == 0 or step == total_steps:
            reporter.progress(step, {f"train_{k}": v for k, v in metrics.items()})

    eval_metrics: dict = {}
    pending = None
    try:
        for step in range(start_step + 1, total_steps + 1):
            state, metrics = train_step(state, next(batches))  # dispatch step t ...
            if pending is not None:
                finish(*pending)  # ... then read step t-1's metrics while t runs
            pending = (step, metrics)
            if step % eval_every == 0 or step == total_steps:
                finish(*pending)
                pending = None
                eval_metrics = evaluate(state)
                reporter.write(step, eval_metrics)
                log.info("step %d  eval top-1 %.4f  top-5 %.4f  loss %.4f", step, eval_metrics["eval_top1"],
                         eval_metrics["eval_top5"], eval_metrics["eval_loss"])
    finally:
        reporter.close()
    return eval_metrics


