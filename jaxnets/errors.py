"""The errors a user fixes: a config value, a dataset to prepare, a workdir, a checkpoint that does not fit
the config or is not there, storage that does not answer, a run that diverged, a multi-host launch. `train.py`
prints any of them as one line (no traceback) and exits 1.

Each also derives from the builtin it refines, so `except ValueError` around a config check keeps working.
Nothing here imports jax or TensorFlow.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user must change; the message names it and says what to do."""


class ConfigError(UserError, ValueError):
    """A bad config value; the message names the field. One line whatever the value shown in it (a section of a
    config prints as several lines of YAML)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()) if "\n" in str(message) else message)


class DatasetNotPreparedError(UserError, FileNotFoundError):
    """The dataset is not on disk; the message gives the command that prepares it."""


class WorkdirError(UserError, OSError):
    """The workdir cannot hold checkpoints; raised before anything trains."""


class IncompatibleCheckpointError(UserError, ValueError):
    """The workdir's checkpoint does not fit the config; no checkpoint was moved or changed."""


class UnrestorableCheckpointsError(UserError, OSError):
    """The workdir has committed checkpoints and none of them can be restored; nothing was moved or changed."""


class StorageUnavailableError(UserError, OSError):
    """The storage holding the checkpoints failed to answer, through every retry; nothing was moved or changed."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """A path given as a checkpoint (`init_from`, `load_checkpoint`) holds no finished one."""


class NonFiniteLossError(UserError, FloatingPointError):
    """A step's loss, gradient norm or updated-parameter norm is NaN or Inf (beyond skip_nonfinite_steps)."""


class LaunchError(UserError):
    """The multi-host flags are incomplete or inconsistent."""
