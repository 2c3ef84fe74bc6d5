"""The trainer: state, pure steps, data parallelism, the host loop and its reporting."""

from jaxnets.train.config import base_config
from jaxnets.train.loop import train_and_evaluate

__all__ = ["base_config", "train_and_evaluate"]
