"""The model zoo. Importing this package registers every family."""

from jaxnets.models import enas, mobilenetv2, resnext  # noqa: F401  (registration side effect)
from jaxnets.models.registry import COMPUTE_DTYPES, create_model, create_model_from_config, list_models

__all__ = ["COMPUTE_DTYPES", "create_model", "create_model_from_config", "list_models"]
