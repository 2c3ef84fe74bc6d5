"""`config.init_from`: a run that starts from another run's model variables (its step, optimizer and rng anew)."""

from __future__ import annotations

import logging

from jaxnets.checkpoints.layout import read_meta, resolve_step_dir
from jaxnets.checkpoints.loading import restore_variables
from jaxnets.checkpoints.manager import model_differences
from jaxnets.errors import CheckpointNotFoundError, IncompatibleCheckpointError

log = logging.getLogger("jaxnets")


def initialise_from(state, path, config: dict, sharding):
    """`state` (a fresh one) with the params and BN statistics of the checkpoint at `path` (a workdir or a step),
    placed with `sharding`. `config` is the run's resolved config as JSON: the checkpoint must be of the same
    model, else IncompatibleCheckpointError names the fields that differ (nothing is read or written)."""
    try:
        step_dir = resolve_step_dir(path)
    except CheckpointNotFoundError as e:
        raise CheckpointNotFoundError(f"config.init_from: {e}") from None
    differing = model_differences(read_meta(step_dir)["config"], config)
    if differing:
        raise IncompatibleCheckpointError(
            f"config.init_from: {step_dir} is of another model (differs in {', '.join(differing)})"
        )
    loaded = restore_variables(step_dir, sharding)
    log.info("parameters and BN statistics from %s; step, optimizer and rng start afresh", step_dir)
    return state.with_model_variables(params=loaded["params"], batch_stats=loaded["batch_stats"])
