"""Trains a jaxnets model: `python train.py --config configs/quickstart.py --workdir /tmp/run`.

Any config field overrides from the command line (`--config.num_train_steps=100`). Launch the same
command on every host of a pod (jaxnets/train/distributed.py).
"""

import logging
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

import jaxnets.tasks  # noqa: F401  (registers the built-in tasks, for a config saved by a run or written by hand)
import jaxnets.train
from jaxnets.errors import UserError
from jaxnets.train import distributed
from jaxnets.train.compilation_cache import use_compilation_cache

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard events and metrics.jsonl go.")
# Multi-host: omit all three where JAX detects the cluster (TPU pod, SLURM, ...); the same command runs on every host.
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for jax.distributed.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes the job has.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "Where JAX keeps compiled programs between runs, 'off' for none (default: "
    "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/jaxnets/compilation-cache; jaxnets/train/compilation_cache.py).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl's parser, except that a mistyped `--config.<key>` is one line, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except AttributeError as e:  # ml_collections: unknown key, with a "did you mean" hint
        hint = str(e).strip("'\"").replace("\\'", "'").replace("\\n", " ")
        sys.exit(f"train.py: unknown config field {hint}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # absl's handler formats the log lines (absl.app installs it); these two libraries are quieted to warnings:
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step by step at INFO
    logging.getLogger("jax").setLevel(logging.WARNING)  # "Unable to initialize backend 'tpu'" on every CPU run
    use_compilation_cache(_COMPILATION_CACHE.value)  # a resumed or repeated run loads its programs, compiles none
    try:
        if distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value):  # before any backend
            if jax.process_index() > 0:  # process 0 tells the story; the others speak up for warnings only
                logging.getLogger("jaxnets").setLevel(logging.WARNING)
        jaxnets.train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except UserError as e:
        sys.exit(f"train.py: {e}")  # the user's to fix: one line, no traceback, exit code 1


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
