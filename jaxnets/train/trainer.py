"""`build_trainer(config) -> Trainer`: one function puts a run together, for train.py, tests and notebooks.

    trainer = build_trainer(config)                  # resolves and checks the config; compiles nothing
    state = trainer.init_state()                     # replicated over the mesh
    state, metrics = trainer.train_step(state, trainer.shard(batch))
    state, metrics = trainer.train_steps(state, trainer.shard_steps([batch, batch]), 2)  # two steps, one call
    print(trainer.evaluate(state, eval_batches))

The trainer holds the resolved config, the run length, the mesh and the task, with the task's steps made
data parallel (`parallel.py`) and the loop's non-finite policy applied. The loop (`loop.py`) adds data,
cadence, signals, checkpoints and reporting, and runs `train_steps`: up to config.steps_per_dispatch steps
per call, so that the host's work per call (dispatch, transfers, reading the metrics) is paid once for all
of them; a small model's step is a few milliseconds, about what that work costs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxnets import data
from jaxnets.errors import ConfigError
from jaxnets.models import layers
from jaxnets.train import parallel
from jaxnets.train.config import resolve_config
from jaxnets.train.nonfinite import discard_non_finite
from jaxnets.train.task import BetweenEpochs, State, Task, get_task

log = logging.getLogger("jaxnets")

STOP_VOTE = "stop_vote"  # the entry of stacked batches that carries each device's wish to stop (`with_stop_vote`)


# For a program that runs once, such as the initialisation, its compile is all that matters: one random draw
# per parameter, each its own fusion, which LLVM optimises for seconds on a CPU (9 s -> 4 s for a MobileNetV2
# at -O0). The values differ from an -O3 build by float contraction only (1 ulp).
RUN_ONCE_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


def call_once(jitted, *args, platform: str, **static_kwargs):
    """`jitted(*args, **static_kwargs)` (a jax.jit whose keyword arguments are static), compiled for a single call
    on `platform` with RUN_ONCE_COMPILER_OPTIONS."""
    compiled = jitted.lower(*args, **static_kwargs).compile(RUN_ONCE_COMPILER_OPTIONS.get(platform))
    return compiled(*args)


@dataclasses.dataclass(frozen=True)
class RunLength:
    """Counts derived from the resolved config and the dataset's size."""

    steps_per_epoch: int
    total_steps: int  # num_epochs of steps, capped by num_train_steps when that is > 0
    eval_every_steps: int


def run_length(config, num_train_examples: int) -> RunLength:
    steps_per_epoch = num_train_examples // config.global_batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"config.global_batch_size={config.global_batch_size} exceeds the {num_train_examples} "
            f"training examples of {config.dataset}"
        )
    total_steps = round(config.num_epochs * steps_per_epoch)
    if config.num_train_steps > 0:
        total_steps = min(total_steps, config.num_train_steps)
    return RunLength(steps_per_epoch, total_steps, max(1, round(config.eval_every_epochs * steps_per_epoch)))


@dataclasses.dataclass(frozen=True)
class Trainer:
    config: ml_collections.ConfigDict  # resolved and locked
    dataset: Any  # jaxnets.data.DatasetInfo
    length: RunLength
    mesh: Mesh
    task: Task
    train_step: Callable[[State, dict], tuple[State, dict]]  # jitted, data parallel; donates the state
    # (state, batches stacked by `shard_steps`, n) -> (state, metrics stacked [steps_per_dispatch]): train_step on
    # the first n batches in one call (rows n... of the metrics are zeros). One program for every n.
    train_steps: Callable[[State, dict, int], tuple[State, dict]]
    steps_per_dispatch: int  # config.steps_per_dispatch, or 1 on several CPU devices (`_steps_per_dispatch`)
    eval_step: Callable[[State, dict], dict]  # jitted, data parallel: psum'd sums of one global batch
    # A task that learns between epochs (`task.BetweenEpochs`): its update, jitted and data parallel; else None.
    epoch_update: Callable[[State, dict], tuple[State, dict]] | None = None

    def init_state(self) -> State:
        init = with_conv_lowering(self.task.init_state, self.config.conv_lowering, self.mesh)
        jitted = jax.jit(init, out_shardings=parallel.replicated(self.mesh))
        return call_once(jitted, platform=parallel.platform(self.mesh))

    def abstract_state(self) -> State:
        """The state's shapes, dtypes and shardings, computed without running anything (to restore onto)."""
        sharding = parallel.replicated(self.mesh)
        state = jax.eval_shape(self.task.init_state)
        _check_state_contract(state, self.config.task)
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), state)

    def shard(self, local_batch: dict) -> dict:
        """This process's numpy batch -> the global batch, sharded over the mesh."""
        return parallel.device_batch(local_batch, self.mesh)

    def shard_steps(self, local_batches: list[dict]) -> dict:
        """Up to `steps_per_dispatch` numpy batches of this process -> `train_steps`' stack of them,
        [steps_per_dispatch, global batch, ...], sharded over the mesh (rows past len(local_batches) repeat the
        last batch: `train_steps` runs only the first n)."""
        steps = self.steps_per_dispatch
        if not 1 <= len(local_batches) <= steps:
            raise ValueError(f"{len(local_batches)} batches for {steps} steps per call")
        padding = [local_batches[-1]] * (steps - len(local_batches))
        stacked = jax.tree.map(_stack, *local_batches, *padding)
        return parallel.device_batch(stacked, self.mesh, parallel.stacked_batch_sharded(self.mesh))

    def with_stop_vote(self, batches: dict, stop: bool) -> dict:
        """`shard_steps`' batches carrying this process's wish to stop; `train_steps` returns `stop_requested`,
        the same on every process (see `agree_on_stopping`)."""
        return {**batches, STOP_VOTE: self._stop_votes[stop]}

    @functools.cached_property
    def _stop_votes(self) -> dict[bool, jax.Array]:
        """The two possible votes, on the devices once: a call reads them and never donates them."""
        local = len(self.mesh.local_devices)  # one value per local device, stacked like the batches
        sharding = parallel.stacked_batch_sharded(self.mesh)
        return {stop: parallel.device_batch(np.full((self.steps_per_dispatch, local), float(stop), np.float32),
                                            self.mesh, sharding)
                for stop in (False, True)}

    def evaluate(self, state: State, batches: Iterable[dict]) -> dict:
        """One pass over host-local eval batches -> the task's `eval_*` metrics."""
        totals = None
        for batch in batches:
            sums = self.eval_step(state, self.shard(batch))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        return self.task.eval_metrics(jax.device_get(totals))

    def checkpoint_meta(self) -> dict:
        """Saved beside every state: enough for a notebook to rebuild the model (`jaxnets.load_checkpoint`)."""
        return {"config": json.loads(self.config.to_json()), "num_classes": self.dataset.num_classes,
                "image_shape": list(self.dataset.image_shape), "class_names": list(self.dataset.class_names),
                "data_stream_version": data.DATA_STREAM_VERSION}


def build_trainer(config, *, devices=None, dataset_info=None) -> Trainer:
    """The trainer for `config` on `devices` (default: every device of every process).

    Resolves and checks the config first (ConfigError naming the field), then reads the dataset's metadata
    unless `dataset_info` (a `jaxnets.data.DatasetInfo`) is given, as tests with synthetic batches do.
    Nothing is compiled until a step runs.
    """
    devices = jax.devices() if devices is None else list(devices)
    config = resolve_config(config, device_count=len(devices))
    if dataset_info is None:
        dataset_info = data.dataset_info(config)  # (the first use of the pipeline imports TensorFlow)
    length = run_length(config, dataset_info.num_train_examples)
    task = get_task(config.task).build(config, dataset_info, length.steps_per_epoch)
    mesh = parallel.create_mesh(devices)
    train_step = with_conv_lowering(task.train_step, config.conv_lowering, mesh)
    if config.skip_nonfinite_steps:
        train_step = discard_non_finite(train_step, task.finite_metrics)
    steps_per_dispatch = _steps_per_dispatch(config.steps_per_dispatch, mesh)
    train_steps = agree_on_stopping(run_steps(train_step, steps_per_dispatch))
    return Trainer(
        config=config,
        dataset=dataset_info,
        length=length,
        mesh=mesh,
        task=task,
        train_step=parallel.data_parallel_train_step(train_step, mesh),
        train_steps=parallel.data_parallel_train_steps(train_steps, mesh),
        steps_per_dispatch=steps_per_dispatch,
        eval_step=parallel.data_parallel_eval_step(with_conv_lowering(task.eval_step, config.conv_lowering, mesh),
                                                   mesh),
        epoch_update=(parallel.data_parallel_train_step(
            with_conv_lowering(task.epoch_update, config.conv_lowering, mesh), mesh)
            if isinstance(task, BetweenEpochs) else None),
    )


def _stack(*rows: np.ndarray) -> np.ndarray:
    return rows[0][None] if len(rows) == 1 else np.stack(rows)  # (one batch: a view, no copy of a large batch)


def with_conv_lowering(step_fn, lowering: str, mesh: Mesh):
    """`step_fn` traced with `config.conv_lowering` (a context read at trace time, not a model field), for the
    platform of the mesh it runs on."""
    platform = parallel.platform(mesh)

    @functools.wraps(step_fn)
    def step(*args, **kwargs):
        with layers.conv_lowering(lowering, platform):
            return step_fn(*args, **kwargs)

    return step


def _check_state_contract(state, name: str) -> None:
    """The state entries the loop, the checkpoints and `init_from` read (`task.State`), checked before anything
    compiles: a task defined elsewhere learns here, in one line, what its state lacks."""
    missing = [f for f in ("step", "params", "batch_stats", "eval_variables", "with_model_variables")
               if not hasattr(state, f)]
    if missing:
        raise TypeError(f"task {name!r}: its state ({type(state).__name__}) lacks {', '.join(missing)} "
                        "(the contract is jaxnets.train.task.State)")


def _steps_per_dispatch(configured: int, mesh) -> int:
    """config.steps_per_dispatch, or 1 (with a warning) on a CPU mesh of several devices: XLA:CPU's in-process
    all-reduces inside a device loop hung there (3 of about 15 runs of the quickstart on 8 forced CPU devices,
    2026-11-29: "Expected 8 threads to join the rendezvous, but only 7 of them arrived"), and CPU processes
    joined by gloo were not tried; one step per call never has. Accelerators and a single CPU run the loop."""
    if configured > 1 and parallel.platform(mesh) == "cpu" and mesh.size > 1:
        log.warning("config.steps_per_dispatch=%d runs as 1 on %d CPU devices (XLA:CPU's collectives inside a "
                    "device loop can hang)", configured, mesh.size)
        return 1
    return configured


def run_steps(step_fn, max_steps: int):
    """(state, batches [max_steps, ...], n) -> (state, metrics [max_steps, ...]): `step_fn` on the first n of the
    batches, one after the other, in one call. A loop with a traced trip count: one program for every n (for
    max_steps = 1, step_fn itself: no loop)."""
    if max_steps == 1:
        def one_step(state, batches, n):
            del n  # always 1
            state, metrics = step_fn(state, jax.tree.map(lambda rows: rows[0], batches))
            return state, jax.tree.map(lambda value: value[None], metrics)

        return one_step

    step = jax.jit(step_fn)  # traced once: the loop's body reuses the trace that eval_shape makes of it

    def steps(state, batches, n):
        first = jax.tree.map(lambda rows: rows[0], batches)
        metrics_shape = jax.eval_shape(step, state, first)[1]
        metrics = jax.tree.map(lambda m: jnp.zeros((max_steps, *m.shape), m.dtype), metrics_shape)

        def one_step(i, carry):
            state, metrics = carry
            state, step_metrics = step(state, jax.tree.map(lambda rows: rows[i], batches))
            return state, jax.tree.map(lambda rows, value: rows.at[i].set(value), metrics, step_metrics)

        return jax.lax.fori_loop(0, n, one_step, (state, metrics))

    return steps


def agree_on_stopping(steps_fn):
    """`steps_fn` (`run_steps`) for batches that may carry STOP_VOTE: it is taken out of the batches, and the
    metrics get `stop_requested`, its maximum over every device of every process. A SIGTERM that reaches one
    host thus reaches the call's output on all of them, which every host reads after the same step: all save
    that step and stop together. Riding on the steps costs one scalar all-reduce and no extra host sync."""

    def steps(state, batches, n):
        if STOP_VOTE not in batches:
            return steps_fn(state, batches, n)
        batches = dict(batches)
        vote = batches.pop(STOP_VOTE)  # [steps, 1] on each device
        new_state, metrics = steps_fn(state, batches, n)
        return new_state, {**metrics, "stop_requested": jax.lax.pmax(jnp.max(vote), parallel.DATA_AXIS)}

    return steps
