"""Shared by the tests against the PyTorch twins (tests/torch_twins): helpers, and the networks each compares."""

import functools

import jax
import numpy as np
import torch
from torch_twins import cifar_mobilenetv2, enas, mobilenetv2, resnet

# Six ENAS layers (reductions after layers 1 and 3) using all six ops, with skips from the stem and across both
# reductions.
ENAS_ARC = "0  4 1  1 0 1  5 1 0 1  2 0 1 1 0  3 1 0 0 1 1"


def randomise_batch_norm(module: torch.nn.Module, seed: int) -> None:
    """Fresh BN layers are the identity in eval mode, which would hide a mis-mapped statistic."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                m.weight.copy_(0.5 + torch.rand(n, generator=generator))
                m.bias.copy_(0.1 * torch.randn(n, generator=generator))


def assert_logits_match(model, variables, twin: torch.nn.Module, size: int, what: str) -> None:
    """jaxnets' eval-mode logits equal the twin's on 2 random images to 1e-4 relative (of the largest logit)."""
    images = np.random.default_rng(2).standard_normal((2, 3, size, size), dtype=np.float32)
    with torch.no_grad():
        expected = twin.eval()(torch.from_numpy(images)).numpy()
    logits = jax.jit(functools.partial(model.apply, train=False))(variables, images.transpose(0, 2, 3, 1))
    assert logits.shape == expected.shape
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(),
                               err_msg=f"{what} at {size}x{size} differs from its PyTorch twin")


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


MOBILENET_STAGES = ((1, 16, 1, 1), (6, 24, 1, 2), (6, 32, 1, 2), (6, 64, 1, 2), (6, 96, 1, 1), (6, 160, 1, 2),
                    (6, 320, 1, 1))  # torchvision's, one block each
CIFAR_MOBILENET_STAGES = tuple((t, c, 1, stride) for t, c, _, stride in cifar_mobilenetv2.SEED_STAGES)
ENAS_FIELDS = {"arc": ENAS_ARC, "num_layers": 6, "num_filters": 8, "num_branches": 6, "keep_prob": 1.0}
PLANES = (16, 32, 64, 128)  # a quarter of the references' (cardinality and width per group kept)


def resnet_family(block, stages: int, **fields):
    """(twin, jaxnets overrides) of a ResNet-family network of one block per stage and a quarter of the planes."""
    twin = functools.partial(resnet.ResNet, block, [1] * stages, stage_planes=PLANES[:stages], **fields)
    return twin, {"stage_sizes": (1,) * stages, "stage_planes": PLANES[:stages]}


# Each family's network for the training-step parity (test_parity_training.py): name -> (twin builder, jaxnets
# model_overrides, image size). test_models.py leaves the networks whose code these run to that test.
TRAINING_FAMILIES = {
    "resnet18": (*resnet_family(resnet.BasicBlock, 4), 32),
    "resnext50_32x4d": (*resnet_family(resnet.Bottleneck, 4, groups=32, width_per_group=4), 32),
    "cifar_resnext50": (*resnet_family(resnet.Bottleneck, 4, groups=32, width_per_group=4, stem="cifar",
                                       grouped_first_1x1=True), 16),
    "resnext29_8x64d": (*resnet_family(resnet.Bottleneck, 3, groups=8, width_per_group=64, stem="cifar"), 8),
    "mobilenet_v2": (functools.partial(mobilenetv2.MobileNetV2, width_mult=0.25, inverted_residual_setting=[
        list(stage) for stage in MOBILENET_STAGES], dropout=0.0),
        {"width_multiplier": 0.25, "stages": MOBILENET_STAGES, "dropout_rate": 0.0}, 32),
    "cifar_mobilenet_v2": (functools.partial(cifar_mobilenetv2.MobileNetV2, stages=CIFAR_MOBILENET_STAGES),
                           {"stages": CIFAR_MOBILENET_STAGES}, 16),
    "enas_macro": (functools.partial(enas.ENASMacroChild, **ENAS_FIELDS), ENAS_FIELDS, 16),
}
