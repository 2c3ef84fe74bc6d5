"""torchvision state_dict -> jaxnets variables.

`convert_state_dict("resnext50_32x4d", state_dict)` takes torchvision key names mapped to arrays (numpy,
or torch tensors: nothing here imports torch) and returns `{"params": ..., "batch_stats": ...}` for
`create_model(name, num_classes=<from the classifier's shape>)`. Every key is accounted for: a missing,
unexpected or mis-shaped tensor raises a ValueError naming it.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxnets.convert.files import load_arrays
from jaxnets.models import create_model

_CLASSIFIER_KEY = {
    "resnext50_32x4d": "fc.weight",
    "resnext101_32x8d": "fc.weight",
    "resnext101_64x4d": "fc.weight",
    "resnext152_32x4d": "fc.weight",
    # No torchvision weights exist for these; their PyTorch twins (jaxnets.reference) use torchvision's names.
    "cifar_resnext50": "fc.weight",
    "resnext29_8x64d": "fc.weight",
    "mobilenet_v2": "classifier.1.weight",
}
SUPPORTED_MODELS = tuple(_CLASSIFIER_KEY)


def convert_state_dict(model_name: str, state_dict: dict[str, Any]) -> dict[str, Any]:
    if model_name not in _CLASSIFIER_KEY:
        raise ValueError(f"no torchvision conversion for {model_name!r}; supported: {', '.join(SUPPORTED_MODELS)}")
    arrays = {k: _to_numpy(v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    classifier_key = _CLASSIFIER_KEY[model_name]
    if classifier_key not in arrays:
        raise ValueError(f"state_dict has no {classifier_key!r}: is it a torchvision {model_name} state_dict?")
    model = create_model(model_name, num_classes=arrays[classifier_key].shape[0])
    target = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    expected = {path: leaf.shape for path, leaf in traverse_util.flatten_dict(target).items()}
    module_path = _resnext_module_path if "resnext" in model_name else _mobilenet_module_path

    flat = {}
    for key, value in arrays.items():
        path, value = _leaf(key, module_path(key.rsplit(".", 1)[0], expected), value)
        if path not in expected:
            raise ValueError(f"unexpected key {key!r} for {model_name} (would map to {'/'.join(path)})")
        if value.shape != expected[path]:
            raise ValueError(f"{key!r} has shape {value.shape} after conversion, {model_name} expects {expected[path]}")
        flat[path] = jnp.asarray(value)
    missing = sorted("/".join(p) for p in expected.keys() - flat.keys())
    if missing:
        raise ValueError(f"state_dict is missing {len(missing)} tensor(s) of {model_name}: {', '.join(missing[:8])}")
    return traverse_util.unflatten_dict(flat)


def load_torchvision_weights(model_name: str, path: str | os.PathLike):
    """(model, variables) from a .safetensors/.npz file holding a torchvision state_dict."""
    variables = convert_state_dict(model_name, load_arrays(path))
    num_classes = variables["params"][_CLASSIFIER_KEY[model_name].split(".")[0]]["kernel"].shape[-1]
    return create_model(model_name, num_classes=num_classes), variables


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


def _resnext_module_path(module: str, expected) -> tuple[str, ...]:
    # layer2.0.downsample.1 -> layer2_0/downsample_bn; conv1, bn1, fc stay.
    match = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", module)
    if not match:
        return (module,)
    stage, block, rest = match.groups()
    rest = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(rest, rest)
    return (f"layer{stage}_{block}", rest)


def _mobilenet_module_path(module: str, expected) -> tuple[str, ...]:
    # features.0.0 -> features_0/conv; features.3.conv.1.0 -> features_3/dw_conv; classifier.1 -> classifier.
    if module == "classifier.1":
        return ("classifier",)
    match = re.fullmatch(r"features\.(\d+)\.(.+)", module)
    if not match:
        return (module,)
    index, rest = match.groups()
    block = f"features_{index}"
    if rest in ("0", "1"):  # stem or head Conv2dNormActivation
        return (block, {"0": "conv", "1": "bn"}[rest])
    has_expand = ("params", block, "expand_conv", "kernel") in expected
    names = ["expand_conv", "expand_bn", "dw_conv", "dw_bn"] if has_expand else ["dw_conv", "dw_bn"]
    names += ["project_conv", "project_bn"]
    torch_names = (["conv.0.0", "conv.0.1", "conv.1.0", "conv.1.1", "conv.2", "conv.3"] if has_expand
                   else ["conv.0.0", "conv.0.1", "conv.1", "conv.2"])
    return (block, dict(zip(torch_names, names, strict=True)).get(rest, rest))
