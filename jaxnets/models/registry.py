"""Models by name: `create_model("resnext50_32x4d", num_classes=10)`.

Each family module registers its variants as data (a module class plus keyword arguments) together with what
the rest of the project needs about them (`Reference`: the published parameter count, the PyTorch twin the
parity tests and benchmarks race, how torchvision's state dicts map onto it). A variant is one line, a new
family is one file, and `create_model` checks overrides against the module's real fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

# The compute dtypes a run config may name (`config.dtype`); parameters and BN statistics stay float32.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class TorchKeys:
    """How a torchvision state dict maps onto the model (and a timm one, renamed to torchvision's names by
    `timm_name` first where timm names the modules differently).

    `module_path("layer2.0.downsample.1", expected)` is the jaxnets module path of a torch module; `expected`
    holds the model's flattened variable paths (`("params", "features_3", "dw_conv", "kernel")`), for
    mappings that depend on the architecture. `jaxnets.convert.torchvision` does the rest (layouts, leaves).
    """

    classifier: str  # the classifier weight's key ("fc.weight"): its shape gives num_classes
    module_path: Callable[[str, Collection[tuple[str, ...]]], tuple[str, ...]]
    timm_name: Callable[[str], str] | None = None  # timm's key -> torchvision's; None: timm's are torchvision's


@dataclasses.dataclass(frozen=True)
class Reference:
    """What the model is checked against."""

    twin: str | None = None  # its PyTorch twin in tests/torch_twins (same architecture, torchvision's key names)
    params: int | None = None  # the published exact parameter count at the default num_classes
    image_size: int = 224  # the input size the reference network is meant for (224 ImageNet, 32 CIFAR)
    torch_keys: TorchKeys | None = None  # None: no torchvision conversion


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    module: type[nn.Module]
    defaults: dict[str, Any]
    reference: Reference
    classifier: str = "fc"  # the path of the module that gives the logits (fine-tuning's "backbone": all others)


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, module: type[nn.Module], *, reference: Reference = Reference(), classifier: str = "fc",
             **defaults: Any) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _check_fields(name, module, defaults)
    _REGISTRY[name] = ModelEntry(name, module, defaults, reference, classifier)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Builds the named model; `overrides` replace any of its fields (num_classes, dtype, ...)."""
    entry = model_entry(name)
    _check_fields(name, entry.module, overrides)
    return entry.module(**{**entry.defaults, **overrides})


def create_model_from_config(config, num_classes: int) -> nn.Module:
    """The model a training config describes: `config.model`, its `model_overrides` and `config.dtype`."""
    return create_model(config.model, num_classes=num_classes, dtype=COMPUTE_DTYPES[config.dtype],
                        **config.model_overrides.to_dict())


def _check_fields(name: str, module: type[nn.Module], kwargs: dict[str, Any]) -> None:
    fields = {f.name for f in dataclasses.fields(module) if f.init and f.name not in ("parent", "name")}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"model {name!r} has no field(s) {', '.join(unknown)}; its fields are: {', '.join(sorted(fields))}"
        )
