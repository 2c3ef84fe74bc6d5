"""`config.init_from`: a run that starts from another run's model variables (its step, optimizer and rng anew)."""

from __future__ import annotations

import logging

from etils import epath

from jaxnets.checkpoints.layout import read_meta, resolve_step_dir
from jaxnets.checkpoints.loading import restore_variables
from jaxnets.checkpoints.manager import model_differences
from jaxnets.errors import CheckpointNotFoundError, IncompatibleCheckpointError

log = logging.getLogger("jaxnets")


def init_source(path, config: dict) -> epath.Path:
    """The step directory `config.init_from` (`path`: a workdir or a step) names, checked before the state is
    initialised: CheckpointNotFoundError without a finished checkpoint there, IncompatibleCheckpointError when it
    is of another model than `config` (the run's resolved config as JSON), naming the fields that differ."""
    try:
        step_dir = resolve_step_dir(path)
    except CheckpointNotFoundError as e:
        raise CheckpointNotFoundError(f"config.init_from: {e}") from None
    differing = model_differences(read_meta(step_dir)["config"], config)
    if differing:
        raise IncompatibleCheckpointError(
            f"config.init_from: {step_dir} is of another model (differs in {', '.join(differing)})"
        )
    return step_dir


def initialise_from(state, step_dir, sharding):
    """`state` (a fresh one) with the params and BN statistics of the checkpoint in `step_dir` (`init_source`'s),
    placed with `sharding`."""
    loaded = restore_variables(step_dir, sharding)
    log.info("parameters and BN statistics from %s; step, optimizer and rng start afresh", step_dir)
    return state.with_model_variables(params=loaded["params"], batch_stats=loaded["batch_stats"])
