"""`train_and_evaluate(config, workdir)`: the loop, host side, the same for every task.

The loop owns the data stream (a function of (seed, step), so a resume continues it exactly), the cadence
of logging, evaluation and checkpoints, preemption signals, the non-finite policy, checkpoints and
reporting. What is trained comes from `build_trainer` (the task seam: `task.py`); its steps stay pure.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator

import jax

from jaxnets import checkpoints as ckpt
from jaxnets import data
from jaxnets.train import parallel
from jaxnets.train.nonfinite import NonFinitePolicy
from jaxnets.train.reporting import Report, Reporter, last_evaluation
from jaxnets.train.signals import StopSignals
from jaxnets.train.task import BetweenEpochs
from jaxnets.train.trainer import Trainer, build_trainer

log = logging.getLogger("jaxnets")


def train_and_evaluate(config, workdir: str, *, on_report: Callable[[Report], None] | None = None,
                       devices=None) -> dict:
    """Trains `config` in `workdir`, resuming from its newest good checkpoint; returns the final eval metrics.

    `on_report` (main process only) receives every `Report` as metrics.jsonl gets it, e.g.
    `jaxnets.plots.LiveCurves()` to watch curves and progress in a notebook. `devices` (a single process only)
    trains on those of its devices, e.g. `jax.devices()[:1]`; by default on every device of every process."""
    devices = None if devices is None else list(devices)
    if devices is not None and jax.process_count() > 1:
        raise ValueError("train_and_evaluate(devices=...) is for a single process: every process of a multi-host "
                         "job trains on all of its devices")
    if devices == []:
        raise ValueError("train_and_evaluate(devices=[]): give at least one device, e.g. jax.devices()[:1]")
    trainer = build_trainer(config, devices=devices)  # resolves and checks the config: nothing compiled or written
    config, length = trainer.config, trainer.length
    ckpt.check_writable(workdir)
    process_index, process_count = jax.process_index(), jax.process_count()
    is_main_process = process_index == 0
    meta = trainer.checkpoint_meta()
    checkpoints = ckpt.Checkpoints(workdir, max_to_keep=config.max_to_keep,
                                   best_metric=trainer.task.best_metric if config.keep_best else None,
                                   is_main_process=is_main_process)
    try:
        state = _initial_state(trainer, meta, checkpoints)  # restores before compiling
    except BaseException:
        checkpoints.close()
        raise

    eval_batches = data.eval_batches(  # (the first use of the input pipeline imports TensorFlow)
        config, config.eval_batch_size // process_count, process_index=process_index, process_count=process_count)
    start_step = int(state.step)
    if is_main_process:  # once the workdir is known to fit: what this run trains, as build_trainer resolved it
        log.info("resolved config (%d steps, %d per epoch, eval every %d):\n%s", length.total_steps,
                 length.steps_per_epoch, length.eval_every_steps, config)
    reporter = Reporter(workdir, length.total_steps, length.steps_per_epoch, config.global_batch_size,
                        is_main_process=is_main_process, start_step=start_step, on_report=on_report)
    log.info("%s on %s: %d steps (%d per epoch), global batch %d over %d devices", config.model, config.dataset,
             length.total_steps, length.steps_per_epoch, config.global_batch_size, trainer.mesh.size)
    eval_metrics: dict = {}  # the last evaluation: what train_and_evaluate returns
    if start_step >= length.total_steps:  # a finished run started again: its result, and what would train more
        eval_metrics = last_evaluation(workdir)
        if is_main_process:
            log.info("%s", _already_complete(config, workdir, start_step, length.total_steps, eval_metrics))
    cadence = Cadence.of(trainer)
    step_batches = data.train_iterator(config, config.global_batch_size // process_count, start_step=start_step,
                                       process_index=process_index, process_count=process_count)
    calls = cadence.dispatches(start_step, trainer.steps_per_dispatch)
    dispatches = parallel.prefetch_to_device(  # (steps, their batches stacked on the devices) for each call
        ((n, [next(step_batches) for _ in range(n)]) for n in calls),
        put=lambda item: (item[0], trainer.shard_steps(item[1])),
        size=2 if trainer.steps_per_dispatch == 1 else 1,  # a call of N steps holds N batches on the devices
    )
    heldout_batches = None
    if cadence.learns_every is not None:  # a task that learns between epochs (the ENAS controller)
        epochs_done = start_step // length.steps_per_epoch
        heldout_batches = parallel.prefetch_to_device(
            data.heldout_iterator(config, trainer.task.epoch_batch_size // process_count,
                                  start_step=epochs_done * trainer.task.epoch_updates,
                                  process_index=process_index, process_count=process_count),
            put=trainer.shard,
        )
    non_finite = NonFinitePolicy(trainer.task, config.skip_nonfinite_steps)
    stop_agreed = False  # some process asked to stop; read from a call's output, so the same on every process

    def read_call(last_step: int, n: int, metrics) -> None:
        """Reads a dispatched call's metrics (blocks only on that call): its steps last_step - n + 1 ... last_step,
        in order; stops at a non-finite loss or update."""
        nonlocal stop_agreed
        metrics = jax.device_get(metrics)  # one transfer of a few scalars per step
        stop_requested = float(metrics.pop("stop_requested", 0.0)) > 0.0
        stop_agreed = stop_agreed or stop_requested
        for row, step in enumerate(range(last_step - n + 1, last_step + 1)):
            step_metrics = {name: values[row] for name, values in metrics.items()}
            non_finite.train_step(step, step_metrics)
            if cadence.logs(step):
                reporter.progress(step, {f"train_{k}": v for k, v in step_metrics.items()})

    pending = None
    step = start_step
    try:
        with StopSignals() as signals:
            for n, batches in dispatches:
                batches = trainer.with_stop_vote(batches, stop=signals.requested is not None)
                state, metrics = trainer.train_steps(state, batches, n)  # dispatch steps step+1 ... step+n ...
                step += n
                if pending is not None:
                    read_call(*pending)  # ... then read the previous call's metrics while these run
                pending = (step, n, metrics)
                # A call ends at every step where the loop acts (`Cadence`), and every decision below depends on
                # the step number and on values read from the steps' outputs only: on a pod every process
                # evaluates, saves and stops at the same steps, and a run acts on the same steps whatever its
                # config.steps_per_dispatch.
                if cadence.learns(step):
                    read_call(*pending)  # a non-finite train step is named as such, not as the task's update
                    pending = None
                    state = _learn_between_epochs(trainer, state, heldout_batches, step, reporter, non_finite)
                evaluating, saving = cadence.evaluates(step), cadence.saves(step) or stop_agreed
                if (evaluating or saving) and pending is not None:
                    read_call(*pending)  # a state is saved only once its losses and updates are known finite
                    pending = None
                if evaluating:
                    with reporter.paused():  # train images/s count training time only
                        eval_metrics = trainer.evaluate(state, eval_batches)
                    reporter.write(step, eval_metrics)
                    log.info("step %d  %s", step, "  ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
                if saving or stop_agreed:  # asynchronous: orbax copies the state to host memory, then writes it
                    checkpoints.save(step, state, meta, eval_metrics if evaluating else None)
                if stop_agreed:
                    log.warning("%s: saved step %d, stopping", signals.requested or "a stop asked by another process",
                                step)
                    break
            if isinstance(trainer.task, BetweenEpochs) and int(state.step) == length.total_steps:
                _complete_run(trainer, state, eval_batches, workdir, reporter, is_main_process)
    finally:
        checkpoints.close()  # waits for the saves in flight
        reporter.close()
    return eval_metrics


def _already_complete(config, workdir: str, step: int, total_steps: int, eval_metrics: dict) -> str:
    where = f"at step {step}" if step == total_steps else f"at step {step}, past this config's {total_steps} steps"
    result = ("; its last evaluation: " + "  ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items())
              if eval_metrics else "")
    longer = f"--config.num_epochs (now {config.num_epochs})"
    if config.num_train_steps > 0:
        longer += f" or --config.num_train_steps (now {config.num_train_steps})"
    return (f"{workdir} is already complete {where}{result}. Nothing to train: to train longer, raise {longer} and "
            "run this again (the schedule follows the new length); to train anew, give another --workdir")


@dataclasses.dataclass(frozen=True)
class Cadence:
    """The steps after which the loop acts: logs, evaluates, saves, learns between epochs (a task that does), ends.
    A call of `train_steps` runs up to config.steps_per_dispatch steps and ends at each of them."""

    total_steps: int
    log_every: int
    eval_every: int
    save_every: int
    learns_every: int | None  # steps per epoch for a task that learns between epochs, else None

    @classmethod
    def of(cls, trainer: Trainer) -> Cadence:
        config, length = trainer.config, trainer.length
        learns_every = length.steps_per_epoch if trainer.epoch_update is not None else None
        return cls(length.total_steps, config.log_every_steps, length.eval_every_steps, config.checkpoint_every_steps,
                   learns_every)

    def logs(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.total_steps

    def evaluates(self, step: int) -> bool:
        return step % self.eval_every == 0 or step == self.total_steps

    def saves(self, step: int) -> bool:
        return step % self.save_every == 0 or step == self.total_steps

    def learns(self, step: int) -> bool:
        return self.learns_every is not None and step % self.learns_every == 0

    def acts(self, step: int) -> bool:
        return self.logs(step) or self.evaluates(step) or self.saves(step) or self.learns(step)

    def dispatches(self, start_step: int, steps_per_dispatch: int) -> Iterator[int]:
        """The number of steps of each call from start_step on: at most steps_per_dispatch, ending at every step
        where the loop acts."""
        step = start_step
        while step < self.total_steps:
            n = 1
            while n < steps_per_dispatch and not self.acts(step + n):
                n += 1
            yield n
            step += n


def _learn_between_epochs(trainer: Trainer, state, heldout_batches, step: int, reporter: Reporter,
                          non_finite: NonFinitePolicy):
    """The task's updates on held-out batches after the epoch that ends at `step`; logs their summary."""
    task = trainer.task
    updates = []
    for _ in range(task.epoch_updates):
        state, metrics = trainer.epoch_update(state, next(heldout_batches))
        updates.append(metrics)
    updates = jax.device_get(updates)
    non_finite.epoch_updates(step, updates)  # (a stop here saves nothing: the run resumes at its last checkpoint)
    scalars, record = task.describe_epoch(state, updates)
    reporter.write(step, scalars)
    reporter.record(task.records_file, step, {"epoch": step // trainer.length.steps_per_epoch, **record})
    log.info("step %d  %s", step, "  ".join(f"{k} {v:.4f}" for k, v in scalars.items()))
    return state


def _complete_run(trainer: Trainer, state, eval_batches, workdir: str, reporter: Reporter,
                  is_main_process: bool) -> None:
    """A completed run's last word (a search's final arc and recipe): computed on every process, written by one.
    The files come first, then the closing record (`final: true`), which a run started again on the finished
    workdir replaces (the files are rewritten the same)."""
    files, record = trainer.task.complete(trainer, state, eval_batches, workdir)
    if is_main_process:
        directory = ckpt.absolute(workdir)
        for name, text in files.items():
            temporary = directory / f".{name}.tmp"  # written whole, then renamed: never a half-written file
            temporary.write_text(text)
            temporary.rename(directory / name)
            log.info("wrote %s", directory / name)
    reporter.record(trainer.task.records_file, int(state.step), {"final": True, **record})


def _initial_state(trainer: Trainer, meta: dict, checkpoints: ckpt.Checkpoints):
    """The workdir's newest good checkpoint, else a fresh state (with `config.init_from`'s model variables)."""
    abstract_state = trainer.abstract_state()
    restored = checkpoints.restore_latest(abstract_state, meta["config"], tuple(meta["class_names"]))
    if restored is not None:
        step, state = restored
        log.info("resuming from %s at step %d", checkpoints.directory, step)
        return state
    # A missing or mismatched init_from is refused before the initialisation compiles (and runs: a state
    # dispatched and then dropped by the refusal kept a notebook's CPU threads busy until it finished).
    init_from = trainer.config.init_from
    source = ckpt.init_source(init_from, meta["config"], abstract_state) if init_from else None
    state = trainer.init_state()
    if source is not None:
        state = ckpt.initialise_from(state, source, parallel.replicated(trainer.mesh))
    return state
