"""PyTorch twins of jaxnets' models, for parity tests and side-by-side benchmarks.

A twin has the reference network's structure, initialisation and state-dict key names (torchvision's, where
torchvision has the model: torchvision itself has no CPU wheel on the project's machines). Twins import nothing
from jaxnets, so a bug there cannot hide from parity. A registry entry names its twin
(`jaxnets.models.model_entry(name).reference.twin`); every builder takes `num_classes=`, and the ENAS child also
jaxnets' own field names (`arc`, `num_layers`, `num_filters`, ...).
"""

from collections.abc import Callable

import torch

from . import cifar_mobilenetv2, enas, mobilenetv2, resnet

TWINS: dict[str, Callable[..., torch.nn.Module]] = {
    "resnet18": resnet.resnet18,
    "resnet50": resnet.resnet50,
    "resnext50_32x4d": resnet.resnext50_32x4d,
    "cifar_resnext50": resnet.cifar_resnext50,
    "resnext29_8x64d": resnet.resnext29_8x64d,
    "mobilenet_v2": mobilenetv2.mobilenet_v2,
    "cifar_mobilenet_v2": cifar_mobilenetv2.cifar_mobilenet_v2,  # (pytorch-cifar100's names, not torchvision's)
    "enas_macro": enas.ENASMacroChild,
}
