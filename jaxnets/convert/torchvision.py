"""torchvision state_dict -> jaxnets variables.

`convert_state_dict("resnext50_32x4d", state_dict)` takes torchvision key names (or timm's: the same for
ResNet/ResNeXt, renamed by the registry entry for MobileNetV2) mapped to arrays (numpy, or torch tensors: nothing
here imports torch) and returns `{"params": ..., "batch_stats": ...}` for `create_model(name, num_classes=<from the
classifier's shape>)`. Every key is accounted for: a missing, unexpected or mis-shaped tensor raises a ValueError
naming it. How a family's module names map onto jaxnets' is its registry entry's `reference.torch_keys`, next to
the model; the layout changes (OIHW -> HWIO, ...) are here.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxnets.convert.files import load_arrays
from jaxnets.models import TorchKeys, create_model, list_models, model_entry


def supported_models() -> list[str]:
    """The registered models that convert from torchvision state dicts."""
    return [name for name in list_models() if model_entry(name).reference.torch_keys is not None]


def convert_state_dict(model_name: str, state_dict: dict[str, Any], **model_overrides) -> dict[str, Any]:
    """jaxnets variables from a torchvision state dict of `model_name`, built with `model_overrides` (the registry
    fields its structure differs in, such as `stage_sizes`); the class count is the classifier's."""
    keys = torch_keys(model_name)
    arrays = {k: _to_numpy(v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    if keys.classifier not in arrays and keys.timm_name is not None:  # timm's names, where they differ
        arrays = {keys.timm_name(k): v for k, v in arrays.items()}
    if keys.classifier not in arrays:
        raise ValueError(f"state_dict has no {keys.classifier!r}: is it a torchvision {model_name} state_dict?")
    shape_key = (model_name, arrays[keys.classifier].shape[0], tuple(sorted(model_overrides.items())))
    try:
        expected = _variable_shapes(*shape_key)
    except TypeError:  # an override given as a list: not hashable, so not kept
        expected = _variable_shapes.__wrapped__(*shape_key)

    flat = {}
    for key, value in arrays.items():
        path, value = _leaf(key, keys.module_path(key.rsplit(".", 1)[0], expected.keys()), value)
        if path not in expected:
            raise ValueError(f"unexpected key {key!r} for {model_name} (would map to {'/'.join(path)})")
        if value.shape != expected[path]:
            raise ValueError(f"{key!r} has shape {value.shape} after conversion, {model_name} expects {expected[path]}")
        flat[path] = jnp.asarray(value)
    missing = sorted("/".join(p) for p in expected.keys() - flat.keys())
    if missing:
        raise ValueError(f"state_dict is missing {len(missing)} tensor(s) of {model_name}: {', '.join(missing[:8])}")
    return traverse_util.unflatten_dict(flat)


@functools.lru_cache(maxsize=16)
def _variable_shapes(model_name: str, num_classes: int, overrides: tuple) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{path: shape} of the model's variables (tracing its init takes ~0.5 s: kept for the next state dict)."""
    model = create_model(model_name, num_classes=num_classes, **dict(overrides))
    target = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(target).items()}


def load_torchvision_weights(model_name: str, path: str | os.PathLike):
    """(model, variables) from a .safetensors/.npz file holding a torchvision state_dict."""
    keys = torch_keys(model_name)
    arrays = load_arrays(path)
    variables = convert_state_dict(model_name, arrays)
    return create_model(model_name, num_classes=arrays[keys.classifier].shape[0]), variables


def torch_keys(model_name: str) -> TorchKeys:
    keys = model_entry(model_name).reference.torch_keys
    if keys is None:
        raise ValueError(f"no torchvision conversion for {model_name!r}; supported: {', '.join(supported_models())}")
    return keys


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, converted without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _leaf(key: str, module: tuple[str, ...], value: np.ndarray):
    """Maps one torch tensor onto (collection, *module, leaf) with the layout change it needs."""
    name = key.rsplit(".", 1)[1]
    if name == "running_mean":
        return ("batch_stats", *module, "mean"), value
    if name == "running_var":
        return ("batch_stats", *module, "var"), value
    if name == "bias":
        return ("params", *module, "bias"), value
    if name == "weight" and value.ndim == 4:  # conv OIHW -> HWIO (grouped: [O, I/g, kh, kw] -> [kh, kw, I/g, O])
        return ("params", *module, "kernel"), value.transpose(2, 3, 1, 0)
    if name == "weight" and value.ndim == 2:  # linear [out, in] -> [in, out]
        return ("params", *module, "kernel"), value.T
    if name == "weight" and value.ndim == 1:  # BN gamma
        return ("params", *module, "scale"), value
    raise ValueError(f"unexpected key {key!r}")
