"""ResNeXt (Xie et al. 2017), torchvision-compatible, plus the CIFAR variants.

One module serves every variant; the variants below are data. Parameter paths mirror torchvision's
(`layer2_0/conv2/kernel` <-> `layer2.0.conv2.weight`) so conversion is a renaming (`TORCH_KEYS`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Sequence
from typing import Any, Literal

import jax.numpy as jnp
from flax import linen as nn

from jaxnets.models import layers
from jaxnets.models.registry import Reference, TorchKeys, register

EXPANSION = 4  # bottleneck output = planes * 4


class Bottleneck(nn.Module):
    """1x1 -> 3x3 grouped (carries the stride, "v1.5") -> 1x1, with a projection shortcut when needed."""

    planes: int
    stride: int
    groups: int
    width_per_group: int
    grouped_first_1x1: bool
    zero_init_residual: bool
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):  # [N, H, W, C_in] -> [N, H/stride, W/stride, planes*4]
        width = int(self.planes * self.width_per_group / 64) * self.groups
        out_features = self.planes * EXPANSION
        first_groups = self.groups if self.grouped_first_1x1 else 1

        # The two inner activations are recomputed in the backward rather than kept (layers.conv_batch_norm's
        # recompute_output): ResNeXt-50's step (64 px, batch 32) kept 291 MiB of scratch, 226 so, and ran 1.05-1.06x
        # faster (benchmarks/results/recompute_ab_resnext50.md); ResNeXt-29's 4155 MiB, 2539.
        conv_bn = layers.conv_batch_norm
        y = conv_bn(x, self.conv(width, 1, groups=first_groups, name="conv1"), self.norm(name="bn1"), activation="relu",
                    recompute_output=True)
        y = conv_bn(y, self.conv(width, 3, stride=self.stride, padding=1, groups=self.groups, name="conv2"),
                    self.norm(name="bn2"), activation="relu", recompute_output=True)

        shortcut = x
        if self.stride != 1 or x.shape[-1] != out_features:
            shortcut = conv_bn(x, self.conv(out_features, 1, stride=self.stride, name="downsample_conv"),
                               self.norm(name="downsample_bn"))
        last_scale_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        return conv_bn(y, self.conv(out_features, 1, name="conv3"), self.norm(scale_init=last_scale_init, name="bn3"),
                       residual=shortcut, activation="relu")  # relu(bn3(conv3(y)) + shortcut)


def check_stages(stage_sizes: Sequence[int], stage_planes: Sequence[int]) -> None:
    if len(stage_planes) != len(stage_sizes):
        raise ValueError(f"stage_sizes {tuple(stage_sizes)} and stage_planes {tuple(stage_planes)} "
                         "must have the same length")


def imagenet_stem(x, conv, norm):  # [N, H, W, C] -> [N, H/4, W/4, 64]: torchvision's conv1, bn1, ReLU, max-pool
    x = layers.conv_batch_norm(x, conv(64, 7, stride=2, padding=3, name="conv1"), norm(name="bn1"), activation="relu")
    return layers.max_pool(x, size=3, stride=2, padding=1)


def pooled_classifier(x, num_classes: int, dtype):  # [N, H, W, C] -> [N, num_classes] float32: global mean, fc
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(num_classes, dtype=dtype, kernel_init=layers.torch_linear_init,
                 bias_init=layers.torch_linear_bias_init(x.shape[-1]), name="fc")(x)
    return x.astype(jnp.float32)


class ResNeXt(nn.Module):
    """ResNeXt with bottleneck blocks.

    stem="imagenet": 7x7/2 conv, BN, ReLU, 3x3/2 max-pool (torchvision). stem="cifar": 3x3/1 conv, BN,
    ReLU, no pooling (the paper's ResNeXt-29 and the pytorch-cifar100 seed code).
    grouped_first_1x1 reproduces the pytorch-cifar100 code, whose first 1x1 conv is grouped as well.
    """

    stage_sizes: Sequence[int]
    groups: int = 32
    width_per_group: int = 4
    stage_planes: Sequence[int] = (64, 128, 256, 512)
    stem: Literal["imagenet", "cifar"] = "imagenet"
    grouped_first_1x1: bool = False
    zero_init_residual: bool = False
    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):  # [N, H, W, 3] -> [N, num_classes]
        check_stages(self.stage_sizes, self.stage_planes)
        conv = functools.partial(layers.Conv, dtype=self.dtype)
        norm = layers.batch_norm(train, self.dtype)

        if self.stem == "imagenet":
            x = imagenet_stem(x, conv, norm)
        elif self.stem == "cifar":
            x = layers.conv_batch_norm(x, conv(64, 3, padding=1, name="conv1"), norm(name="bn1"),
                                       activation="relu")  # [N, H, W, 64]
        else:
            raise ValueError(f"ResNeXt stem must be 'imagenet' or 'cifar', got {self.stem!r}")

        for stage, (num_blocks, planes) in enumerate(zip(self.stage_sizes, self.stage_planes, strict=True)):
            for block in range(num_blocks):
                x = Bottleneck(
                    planes=planes,
                    stride=2 if stage > 0 and block == 0 else 1,
                    groups=self.groups,
                    width_per_group=self.width_per_group,
                    grouped_first_1x1=self.grouped_first_1x1,
                    zero_init_residual=self.zero_init_residual,
                    conv=conv,
                    norm=norm,
                    name=f"layer{stage + 1}_{block}",
                )(x)

        return pooled_classifier(x, self.num_classes, self.dtype)


def torch_module_path(module: str, expected: Collection[tuple[str, ...]]) -> tuple[str, ...]:
    """torchvision's (and timm's) ResNet/ResNeXt module names: layer2.0.downsample.1 -> layer2_0/downsample_bn;
    conv1, bn1 and fc stay."""
    match = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", module)
    if not match:
        return (module,)
    stage, block, rest = match.groups()
    rest = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(rest, rest)
    return (f"layer{stage}_{block}", rest)


TORCH_KEYS = TorchKeys(classifier="fc.weight", module_path=torch_module_path)

# torchvision (ImageNet), with its published counts. ResNeXt-152 32x4d is not in torchvision (same key names).
register("resnext50_32x4d", ResNeXt, stage_sizes=(3, 4, 6, 3), groups=32, width_per_group=4,
         reference=Reference(twin="resnext50_32x4d", params=25_028_904, torch_keys=TORCH_KEYS))
register("resnext101_32x8d", ResNeXt, stage_sizes=(3, 4, 23, 3), groups=32, width_per_group=8,
         reference=Reference(params=88_791_336, torch_keys=TORCH_KEYS))
register("resnext101_64x4d", ResNeXt, stage_sizes=(3, 4, 23, 3), groups=64, width_per_group=4,
         reference=Reference(params=83_455_272, torch_keys=TORCH_KEYS))
register("resnext152_32x4d", ResNeXt, stage_sizes=(3, 8, 36, 3), groups=32, width_per_group=4,
         reference=Reference(torch_keys=TORCH_KEYS))

# CIFAR (32x32). No torchvision weights exist for these; those with a PyTorch twin convert from its state dict
# (torchvision's key names).
# The paper's CIFAR ResNeXt-29: three stages of three blocks, 64 channels per group in stage 1.
_resnext29 = dict(stage_sizes=(3, 3, 3), stage_planes=(64, 128, 256), stem="cifar", width_per_group=64, num_classes=10)
register("resnext29_8x64d", ResNeXt, groups=8, **_resnext29,
         reference=Reference(twin="resnext29_8x64d", image_size=32, torch_keys=TORCH_KEYS))
register("resnext29_16x64d", ResNeXt, groups=16, **_resnext29, reference=Reference(image_size=32))

# The pytorch-cifar100 seed code: ImageNet stage layout on a CIFAR stem, grouped first 1x1.
_seed_cifar = dict(groups=32, width_per_group=4, stem="cifar", grouped_first_1x1=True, num_classes=100)
register("cifar_resnext50", ResNeXt, stage_sizes=(3, 4, 6, 3), **_seed_cifar,
         reference=Reference(twin="cifar_resnext50", image_size=32, torch_keys=TORCH_KEYS))
register("cifar_resnext101", ResNeXt, stage_sizes=(3, 4, 23, 3), **_seed_cifar, reference=Reference(image_size=32))
register("cifar_resnext152", ResNeXt, stage_sizes=(3, 4, 36, 3), **_seed_cifar, reference=Reference(image_size=32))
