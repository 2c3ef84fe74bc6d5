"""The model zoo. Importing this package imports (and so registers) every family module in it: a new family
is one new file here."""

import importlib
import pkgutil

from jaxnets.models.registry import (
    COMPUTE_DTYPES,
    ModelEntry,
    Reference,
    TorchKeys,
    create_model,
    create_model_from_config,
    list_models,
    model_entry,
)

_NOT_FAMILIES = {"registry", "layers"}
for _family in pkgutil.iter_modules(__path__):
    if _family.name not in _NOT_FAMILIES:
        importlib.import_module(f"{__name__}.{_family.name}")

__all__ = [
    "COMPUTE_DTYPES",
    "ModelEntry",
    "Reference",
    "TorchKeys",
    "create_model",
    "create_model_from_config",
    "list_models",
    "model_entry",
]
