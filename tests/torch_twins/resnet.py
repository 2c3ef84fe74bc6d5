"""torchvision's models/resnet.py (ResNet with basic or bottleneck blocks, ResNeXt): same structure, key names
and init.

Beyond torchvision, the options jaxnets' CIFAR ResNeXts need (the CIFAR stem, stage planes, a grouped first 1x1),
so that they have twins with torchvision's key names too: `cifar_resnext50` (the pytorch-cifar100 seed code) and
`resnext29_8x64d` (the paper's CIFAR ResNeXt-29)."""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, grouped_first_1x1=False):
        super().__init__()
        if groups != 1 or base_width != 64 or grouped_first_1x1:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, grouped_first_1x1=False):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, groups=groups if grouped_first_1x1 else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64,
                 stage_planes=(64, 128, 256, 512), stem="imagenet", grouped_first_1x1=False):
        super().__init__()
        self.block = block
        self.inplanes = 64
        self.groups = groups
        self.base_width = width_per_group
        self.grouped_first_1x1 = grouped_first_1x1
        imagenet = stem == "imagenet"  # else "cifar": a 3x3/1 conv and no pooling
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7 if imagenet else 3, stride=2 if imagenet else 1,
                               padding=3 if imagenet else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if imagenet else nn.Identity()
        for stage, (planes, blocks) in enumerate(zip(stage_planes, layers, strict=True)):  # layer1, layer2, ...
            setattr(self, f"layer{stage + 1}", self._make_layer(planes, blocks, stride=1 if stage == 0 else 2))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(stage_planes[-1] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, planes, blocks, stride=1):
        block = self.block
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                        self.grouped_first_1x1)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                grouped_first_1x1=self.grouped_first_1x1))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(self.num_stages):
            x = getattr(self, f"layer{stage + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(**kwargs) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet50(**kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def resnext50_32x4d(**kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4, **kwargs)


def cifar_resnext50(**kwargs) -> ResNet:
    """jaxnets' `cifar_resnext50`: the ImageNet stages on a CIFAR stem, the first 1x1 grouped too."""
    return ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4, stem="cifar", grouped_first_1x1=True,
                  **{"num_classes": 100, **kwargs})


def resnext29_8x64d(**kwargs) -> ResNet:
    """jaxnets' `resnext29_8x64d`: three stages of three blocks, 64 channels per group in stage 1."""
    return ResNet(Bottleneck, [3, 3, 3], groups=8, width_per_group=64, stage_planes=(64, 128, 256), stem="cifar",
                  **{"num_classes": 10, **kwargs})
