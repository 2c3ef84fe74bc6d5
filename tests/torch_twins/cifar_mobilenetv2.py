"""pytorch-cifar100's models/mobilenetv2.py (weiaicunzai): the seed CIFAR MobileNetV2, same structure and names.

A 1x1 stem with padding 1, every conv with a bias, an expand conv in the t=1 block too, the 160 stage at stride 1,
a 1x1 conv as the classifier, no dropout. `stages` (the seed's `_make_stage` arguments) lets tests build it with
fewer blocks; the default is the seed's network (2,369,380 parameters at 100 classes).
"""

from __future__ import annotations

from torch import nn

SEED_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1),
               (6, 320, 1, 1))  # (t, out channels, repeats, first stride)


class LinearBottleNeck(nn.Module):
    def __init__(self, in_channels, out_channels, stride, t=6):
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, in_channels * t, 1),
            nn.BatchNorm2d(in_channels * t),
            nn.ReLU6(inplace=True),
            nn.Conv2d(in_channels * t, in_channels * t, 3, stride=stride, padding=1, groups=in_channels * t),
            nn.BatchNorm2d(in_channels * t),
            nn.ReLU6(inplace=True),
            nn.Conv2d(in_channels * t, out_channels, 1),
            nn.BatchNorm2d(out_channels),
        )
        self.stride, self.in_channels, self.out_channels = stride, in_channels, out_channels

    def forward(self, x):
        residual = self.residual(x)
        if self.stride == 1 and self.in_channels == self.out_channels:
            residual = residual + x
        return residual


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=100, stages=SEED_STAGES):
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(3, 32, 1, padding=1), nn.BatchNorm2d(32), nn.ReLU6(inplace=True))
        blocks, channels = [], 32
        for t, out_channels, repeats, stride in stages:
            for i in range(repeats):
                blocks.append(LinearBottleNeck(channels, out_channels, stride if i == 0 else 1, t))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)  # the seed's stage1 ... stage7, flattened
        self.conv1 = nn.Sequential(nn.Conv2d(channels, 1280, 1), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True))
        self.conv2 = nn.Conv2d(1280, num_classes, 1)

    def forward(self, x):
        x = self.conv1(self.blocks(self.pre(x)))
        return self.conv2(nn.functional.adaptive_avg_pool2d(x, 1)).flatten(1)


def cifar_mobilenet_v2(**kwargs) -> MobileNetV2:
    return MobileNetV2(**kwargs)


def to_flax_variables(twin: MobileNetV2) -> dict:
    """The twin's state as jaxnets' `cifar_mobilenet_v2` variables: pre -> features_0, block i -> features_{i+1}
    (expand, depthwise, project), conv1 -> the last features_*, conv2 -> classifier."""
    variables: dict = {"params": {}, "batch_stats": {}}

    def conv_bn(conv, bn, name, conv_name="conv", bn_name="bn"):
        params = variables["params"].setdefault(name, {})
        params[conv_name] = {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0).copy(),
                             "bias": conv.bias.detach().numpy().copy()}
        params[bn_name] = {"scale": bn.weight.detach().numpy().copy(), "bias": bn.bias.detach().numpy().copy()}
        variables["batch_stats"].setdefault(name, {})[bn_name] = {"mean": bn.running_mean.numpy().copy(),
                                                                  "var": bn.running_var.numpy().copy()}

    conv_bn(twin.pre[0], twin.pre[1], "features_0")
    for i, block in enumerate(twin.blocks, start=1):
        r = block.residual
        for conv, bn, part in ((r[0], r[1], "expand"), (r[3], r[4], "dw"), (r[6], r[7], "project")):
            conv_bn(conv, bn, f"features_{i}", f"{part}_conv", f"{part}_bn")
    conv_bn(twin.conv1[0], twin.conv1[1], f"features_{len(twin.blocks) + 1}")
    variables["params"]["classifier"] = {"kernel": twin.conv2.weight.detach().numpy()[:, :, 0, 0].T.copy(),
                                         "bias": twin.conv2.bias.detach().numpy().copy()}
    return variables

