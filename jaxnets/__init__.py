"""jaxnets: ResNeXt, ResNet, MobileNetV2 and the ENAS macro search space in JAX/Flax."""

import importlib

from jaxnets.storage import use_storage_emulator

use_storage_emulator()  # before any gs:// path is opened (the clients read their variables once)

__version__ = "0.1.0"

__all__ = ["load_checkpoint", "predict", "read_class_names"]

# The notebook API loads on first use, so that the zoo alone (`import jaxnets.models`) brings in no checkpoint or
# input stack (orbax, tensorstore; ~1.3 s and ~35 MiB of RSS here).
_ON_FIRST_USE = {"load_checkpoint": "jaxnets.checkpoints", "read_class_names": "jaxnets.checkpoints",
                 "predict": "jaxnets.prediction"}


def __getattr__(name: str):
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'jaxnets' has no attribute {name!r}")
    value = getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_ON_FIRST_USE})
