"""The trainer: one config, a task seam, data parallelism, and the loop with its checkpoints and reporting."""

from jaxnets.train.config import base_config, resolve_config
from jaxnets.train.loop import train_and_evaluate
from jaxnets.train.trainer import Trainer, build_trainer

__all__ = ["Trainer", "base_config", "build_trainer", "resolve_config", "train_and_evaluate"]
