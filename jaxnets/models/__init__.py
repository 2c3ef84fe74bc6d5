"""The model zoo. Importing this package registers every family."""

from jaxnets.models import enas, mobilenetv2, resnext  # noqa: F401  (registration side effect)
from jaxnets.models.registry import create_model, list_models

__all__ = ["create_model", "list_models"]
