"""Models by name: `create_model("resnext50_32x4d", num_classes=10)`.

Each family module registers its variants as data (a module class plus keyword arguments), so a
variant is one line and `create_model` can check overrides against the module's real fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import linen as nn

_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {}


def register(name: str, module: type[nn.Module], **defaults: Any) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _check_fields(name, module, defaults)
    _REGISTRY[name] = (module, defaults)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Builds the named model; `overrides` replace any of its fields (num_classes, dtype, ...)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    module, defaults = _REGISTRY[name]
    _check_fields(name, module, overrides)
    return module(**{**defaults, **overrides})


def _check_fields(name: str, module: type[nn.Module], kwargs: dict[str, Any]) -> None:
    fields = {f.name for f in dataclasses.fields(module) if f.init and f.name not in ("parent", "name")}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"model {name!r} has no field(s) {', '.join(unknown)}; its fields are: {', '.join(sorted(fields))}"
        )
