"""jaxnets: ResNeXt, ResNet, MobileNetV2 and the ENAS macro search space in JAX/Flax."""

from jaxnets.storage import use_storage_emulator

use_storage_emulator()  # before any gs:// path is opened (the clients read their variables once)

from jaxnets.checkpoints import load_checkpoint, read_class_names  # noqa: E402
from jaxnets.predict import predict  # noqa: E402

__version__ = "0.1.0"

__all__ = ["load_checkpoint", "predict", "read_class_names"]
