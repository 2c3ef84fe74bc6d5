"""Models by name: `create_model("resnext50_32x4d", num_classes=10)`.

Each family module registers its variants as data (a module class plus keyword arguments), so a
variant is one line and `create_model` can check overrides against the module's real fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

# The compute dtypes a run config may name (`config.dtype`); parameters and BN statistics stay float32.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

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


def create_model_from_config(config, num_classes: int) -> nn.Module:
    """The model a training config describes: `config.model`, its `model_overrides` and `config.dtype`."""
    return create_model(config.model, num_classes=num_classes, dtype=COMPUTE_DTYPES[config.dtype],
                        **config.model_overrides.to_dict())


def _check_fields(name: str, module: type[nn.Module], kwargs: dict[str, Any]) -> None:
    fields = {f.name for f in dataclasses.fields(module) if f.init and f.name not in ("parent", "name")}
    unknown = sorted(set(kwargs) - fields)
    if "conv_lowering" in unknown:  # a model field until 2026-11; now the trainer's
        raise ValueError("conv_lowering is not a model field: set config.conv_lowering (or $JAXNETS_CONV_LOWERING)")
    if unknown:
        raise ValueError(
            f"model {name!r} has no field(s) {', '.join(unknown)}; its fields are: {', '.join(sorted(fields))}"
        )
