"""jaxnets: ResNeXt, ResNet, MobileNetV2 and the ENAS macro search space in JAX/Flax."""

from jaxnets.checkpoints import load_checkpoint, read_class_names
from jaxnets.predict import predict

__version__ = "0.1.0"

__all__ = ["load_checkpoint", "predict", "read_class_names"]
