"""A run's checkpoints: where they are (`layout`), saving and resuming (`manager`), starting from another run
(`init_from`), and loading one in a notebook (`loading`: `jaxnets.load_checkpoint`)."""

from jaxnets.checkpoints.init_from import init_source, initialise_from
from jaxnets.checkpoints.layout import absolute, is_local, read_meta, resolve_step_dir
from jaxnets.checkpoints.loading import load_checkpoint, read_class_names, restore_variables
from jaxnets.checkpoints.manager import Checkpoints, check_writable

__all__ = ["Checkpoints", "absolute", "check_writable", "init_source", "initialise_from", "is_local",
           "load_checkpoint", "read_class_names", "read_meta", "resolve_step_dir", "restore_variables"]
