"""ResNet (He et al. 2016) as torchvision builds it: ResNet-18/34 with basic blocks, ResNet-50/101 with bottlenecks.

The bottleneck is ResNeXt's with one group of width 64 (the stride on the 3x3, torchvision's "v1.5"), so a
ResNet-50 is a ResNeXt with groups=1; the stem, the stages and the head are torchvision's. Parameter paths mirror
torchvision's exactly as ResNeXt's do (`layer2_0/downsample_conv/kernel` <-> `layer2.0.downsample.0.weight`), so
ResNeXt's key mapping converts torchvision's (and timm's) ResNet state dicts too.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import jax.numpy as jnp
from flax import linen as nn

from jaxnets.models import layers
from jaxnets.models.registry import Reference, register
from jaxnets.models.resnext import TORCH_KEYS, Bottleneck, check_stages, imagenet_stem, pooled_classifier


class BasicBlock(nn.Module):
    """3x3 (carries the stride) -> 3x3, with a projection shortcut when needed; expansion 1."""

    planes: int
    stride: int
    zero_init_residual: bool
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):  # [N, H, W, C_in] -> [N, H/stride, W/stride, planes]
        conv_bn = layers.conv_batch_norm
        y = conv_bn(x, self.conv(self.planes, 3, stride=self.stride, padding=1, name="conv1"), self.norm(name="bn1"),
                    activation="relu")

        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            shortcut = conv_bn(x, self.conv(self.planes, 1, stride=self.stride, name="downsample_conv"),
                               self.norm(name="downsample_bn"))
        last_scale_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        return conv_bn(y, self.conv(self.planes, 3, padding=1, name="conv2"),
                       self.norm(scale_init=last_scale_init, name="bn2"), residual=shortcut, activation="relu")


class ResNet(nn.Module):
    """7x7/2 conv, BN, ReLU, 3x3/2 max-pool, then stages of `block`s (the first of stages 2+ strided), global
    average pool, fc."""

    stage_sizes: Sequence[int]
    block: Literal["basic", "bottleneck"] = "bottleneck"
    stage_planes: Sequence[int] = (64, 128, 256, 512)
    zero_init_residual: bool = False
    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):  # [N, H, W, 3] -> [N, num_classes]
        check_stages(self.stage_sizes, self.stage_planes)
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"ResNet block must be 'basic' or 'bottleneck', got {self.block!r}")
        conv = functools.partial(layers.Conv, dtype=self.dtype)
        norm = layers.batch_norm(train, self.dtype)

        x = imagenet_stem(x, conv, norm)  # [N, H/4, W/4, 64]

        for stage, (num_blocks, planes) in enumerate(zip(self.stage_sizes, self.stage_planes, strict=True)):
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                name = f"layer{stage + 1}_{block}"
                if self.block == "basic":
                    x = BasicBlock(planes=planes, stride=stride, zero_init_residual=self.zero_init_residual,
                                   conv=conv, norm=norm, name=name)(x)
                else:
                    x = Bottleneck(planes=planes, stride=stride, groups=1, width_per_group=64,
                                   grouped_first_1x1=False, zero_init_residual=self.zero_init_residual,
                                   conv=conv, norm=norm, name=name)(x)

        return pooled_classifier(x, self.num_classes, self.dtype)


# torchvision (ImageNet) and its published counts (1000 classes).
register("resnet18", ResNet, stage_sizes=(2, 2, 2, 2), block="basic",
         reference=Reference(twin="resnet18", params=11_689_512, torch_keys=TORCH_KEYS))
register("resnet34", ResNet, stage_sizes=(3, 4, 6, 3), block="basic",
         reference=Reference(params=21_797_672, torch_keys=TORCH_KEYS))
register("resnet50", ResNet, stage_sizes=(3, 4, 6, 3),
         reference=Reference(twin="resnet50", params=25_557_032, torch_keys=TORCH_KEYS))
register("resnet101", ResNet, stage_sizes=(3, 4, 23, 3),
         reference=Reference(params=44_549_160, torch_keys=TORCH_KEYS))
