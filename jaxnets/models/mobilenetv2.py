"""MobileNetV2 (Sandler et al. 2018), torchvision-compatible, plus the pytorch-cifar100 seed variant.

Parameter paths: `features_0` stem, `features_1`..`features_17` inverted residuals (`expand_conv`,
`expand_bn`, `dw_conv`, `dw_bn`, `project_conv`, `project_bn`), `features_18` head conv, `classifier`;
`TORCH_KEYS` maps torchvision's names onto them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Sequence
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from jaxnets.models import layers
from jaxnets.models.registry import Reference, TorchKeys, register

# (expand ratio t, output channels c, repeats n, first stride s), from the paper's Table 2.
IMAGENET_STAGES = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
# The seed code keeps the 160-channel stage at stride 1 (its 32x32 inputs are already small).
SEED_CIFAR_STAGES = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible`: nearest multiple of `divisor`, at least `divisor`, and never
    more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNReLU6(nn.Module):
    features: int
    kernel_size: int
    stride: int
    padding: int
    groups: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        conv = self.conv(self.features, self.kernel_size, stride=self.stride, padding=self.padding,
                         groups=self.groups, name="conv")
        return layers.conv_batch_norm(x, conv, self.norm(name="bn"), activation="relu6")


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t == 1 unless `expand_when_t1`) -> 3x3 depthwise -> 1x1 linear projection."""

    out_features: int
    stride: int
    expand_ratio: int
    expand_when_t1: bool
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):  # [N, H, W, C_in] -> [N, H/stride, W/stride, out]
        in_features = x.shape[-1]
        hidden = int(round(in_features * self.expand_ratio))
        # The two expanded tensors (t x the block's channels: most of the activations) are recomputed in the backward
        # rather than kept (layers.conv_batch_norm's recompute_output): a 64 px, batch 32 train step kept 136 MiB
        # of scratch, 80 MiB so, and ran 1.00-1.09x faster (benchmarks/results/recompute_ab.md).
        conv_bn = layers.conv_batch_norm
        y = x
        if self.expand_ratio != 1 or self.expand_when_t1:
            y = conv_bn(y, self.conv(hidden, 1, name="expand_conv"), self.norm(name="expand_bn"), activation="relu6",
                        recompute_output=True)
        y = conv_bn(y, self.conv(hidden, 3, stride=self.stride, padding=1, groups=hidden, name="dw_conv"),
                    self.norm(name="dw_bn"), activation="relu6", recompute_output=True)
        residual = x if self.stride == 1 and in_features == self.out_features else None
        return conv_bn(y, self.conv(self.out_features, 1, name="project_conv"), self.norm(name="project_bn"),
                       residual=residual)


class MobileNetV2(nn.Module):
    """MobileNetV2. Defaults are torchvision's `mobilenet_v2()`.

    The seed CIFAR variant (see `cifar_mobilenet_v2` below) differs in data only: a 1x1 stem with
    padding 1, conv biases, an expand conv also in the t=1 block, the 160 stage at stride 1, no dropout.
    """

    num_classes: int = 1000
    width_multiplier: float = 1.0
    round_nearest: int = 8
    stages: Sequence[tuple[int, int, int, int]] = IMAGENET_STAGES
    stem_kernel: int = 3
    stem_stride: int = 2
    stem_padding: int = 1
    use_bias: bool = False
    expand_when_t1: bool = False
    dropout_rate: float = 0.2
    classifier_init_std: float | None = 0.01  # torchvision: N(0, 0.01); None: nn.Linear's default
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):  # [N, H, W, 3] -> [N, num_classes]
        conv = functools.partial(layers.Conv, use_bias=self.use_bias, dtype=self.dtype)
        norm = layers.batch_norm(train, self.dtype)
        divisible = functools.partial(make_divisible, divisor=self.round_nearest)

        stem_features = divisible(32 * self.width_multiplier)
        x = ConvBNReLU6(stem_features, self.stem_kernel, self.stem_stride, self.stem_padding, 1, conv, norm,
                        name="features_0")(x)
        index = 1
        for expand_ratio, channels, repeats, first_stride in self.stages:
            for repeat in range(repeats):
                x = InvertedResidual(
                    out_features=divisible(channels * self.width_multiplier),
                    stride=first_stride if repeat == 0 else 1,
                    expand_ratio=expand_ratio,
                    expand_when_t1=self.expand_when_t1,
                    conv=conv,
                    norm=norm,
                    name=f"features_{index}",
                )(x)
                index += 1
        head_features = divisible(1280 * max(1.0, self.width_multiplier))
        x = ConvBNReLU6(head_features, 1, 1, 0, 1, conv, norm, name=f"features_{index}")(x)

        x = jnp.mean(x, axis=(1, 2))  # [N, head_features]
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        if self.classifier_init_std is None:
            kernel_init, bias_init = layers.torch_linear_init, layers.torch_linear_bias_init(x.shape[-1])
        else:
            kernel_init, bias_init = nn.initializers.normal(self.classifier_init_std), nn.initializers.zeros
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=kernel_init, bias_init=bias_init,
                     name="classifier")(x)
        return x.astype(jnp.float32)


def torch_module_path(module: str, expected: Collection[tuple[str, ...]]) -> tuple[str, ...]:
    """torchvision's module names: features.0.0 -> features_0/conv; features.3.conv.1.0 -> features_3/dw_conv
    (a block's indices depend on whether it has an expand conv, read from `expected`); classifier.1 -> classifier."""
    if module == "classifier.1":
        return ("classifier",)
    match = re.fullmatch(r"features\.(\d+)\.(.+)", module)
    if not match:
        return (module,)
    index, rest = match.groups()
    block = f"features_{index}"
    if rest in ("0", "1"):  # stem or head Conv2dNormActivation
        return (block, {"0": "conv", "1": "bn"}[rest])
    if ("params", block, "expand_conv", "kernel") in expected:
        names = {"conv.0.0": "expand_conv", "conv.0.1": "expand_bn", "conv.1.0": "dw_conv", "conv.1.1": "dw_bn",
                 "conv.2": "project_conv", "conv.3": "project_bn"}
    else:
        names = {"conv.0.0": "dw_conv", "conv.0.1": "dw_bn", "conv.1": "project_conv", "conv.2": "project_bn"}
    return (block, names.get(rest, rest))


# timm's mobilenetv2_100 (timm/models/efficientnet.py, _gen_mobilenet_v2): the same layers, named by stage and
# block (blocks.<stage>.<block>, 1, 2, 3, 4, 3, 3, 1 blocks a stage), torchvision's features.1 ... features.17 in
# order. Its first block has no expand conv (a depthwise-separable block); bn1/bn2 mean other layers there, in the
# other blocks and at the top level, so whole prefixes are matched.
_TIMM_STAGE_BLOCKS = (1, 2, 3, 4, 3, 3, 1)
_TIMM_TOP = {"conv_stem": "features.0.0", "bn1": "features.0.1", "conv_head": "features.18.0",
             "bn2": "features.18.1", "classifier": "classifier.1"}
_TIMM_SEPARABLE = {"conv_dw": "conv.0.0", "bn1": "conv.0.1", "conv_pw": "conv.1", "bn2": "conv.2"}
_TIMM_INVERTED = {"conv_pw": "conv.0.0", "bn1": "conv.0.1", "conv_dw": "conv.1.0", "bn2": "conv.1.1",
                  "conv_pwl": "conv.2", "bn3": "conv.3"}


def timm_name(key: str) -> str:
    """timm's mobilenetv2_100 key -> torchvision's: blocks.1.0.conv_pwl.weight -> features.2.conv.2.weight."""
    module, leaf = key.rsplit(".", 1)
    if module in _TIMM_TOP:
        return f"{_TIMM_TOP[module]}.{leaf}"
    match = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(\w+)", module)
    if not match:
        return key  # not timm's: left for the conversion to name
    stage, block, layer = int(match[1]), int(match[2]), match[3]
    names = _TIMM_SEPARABLE if stage == 0 else _TIMM_INVERTED
    index = 1 + sum(_TIMM_STAGE_BLOCKS[:stage]) + block
    return f"features.{index}.{names.get(layer, layer)}.{leaf}"


register("mobilenet_v2", MobileNetV2, classifier="classifier",
         reference=Reference(twin="mobilenet_v2", params=3_504_872,
                             torch_keys=TorchKeys(classifier="classifier.1.weight", module_path=torch_module_path,
                                                  timm_name=timm_name)))
register(
    "cifar_mobilenet_v2",
    MobileNetV2,
    num_classes=100,
    stages=SEED_CIFAR_STAGES,
    stem_kernel=1,
    stem_stride=1,
    stem_padding=1,
    use_bias=True,
    expand_when_t1=True,
    dropout_rate=0.0,
    classifier_init_std=None,
    classifier="classifier",
    reference=Reference(twin="cifar_mobilenet_v2", params=2_369_380, image_size=32),  # pytorch-cifar100's code
)
