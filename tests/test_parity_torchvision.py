"""jaxnets with converted weights reproduces torchvision's logits (float32, CPU, eval mode)."""

import functools

import jax
import numpy as np
import pytest
import torch
from parity import randomise_batch_norm

from jaxnets.convert.torchvision import convert_state_dict
from jaxnets.models import create_model
from jaxnets.reference import torchvision_mobilenetv2, torchvision_resnext

TORCH_BUILDERS = {
    "resnext50_32x4d": torchvision_resnext.resnext50_32x4d,
    "mobilenet_v2": torchvision_mobilenetv2.mobilenet_v2,
}


@pytest.mark.parametrize("size", [224, 64])
@pytest.mark.parametrize("name", sorted(TORCH_BUILDERS))
def test_logits_match_pytorch(name, size):
    torch.manual_seed(0)
    reference = TORCH_BUILDERS[name]().eval()
    randomise_batch_norm(reference, seed=1)
    images = np.random.default_rng(2).standard_normal((2, 3, size, size), dtype=np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images)).numpy()

    model = create_model(name)
    variables = convert_state_dict(name, reference.state_dict())
    logits = jax.jit(functools.partial(model.apply, train=False))(variables, images.transpose(0, 2, 3, 1))

    assert logits.shape == (2, 1000)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4 * scale,
                               err_msg=f"{name} at {size}x{size} differs from the PyTorch reference")


CIFAR_TWINS = {
    "cifar_resnext50": torchvision_resnext.cifar_resnext50,
    "resnext29_8x64d": torchvision_resnext.resnext29_8x64d,
}


@pytest.mark.parametrize("name", sorted(CIFAR_TWINS))
def test_cifar_resnext_twins_match_jaxnets(name):
    """The PyTorch twins the benchmarks race (same architecture, torchvision's key names) at 32x32."""
    torch.manual_seed(0)
    reference = CIFAR_TWINS[name]().eval()
    randomise_batch_norm(reference, seed=1)
    images = np.random.default_rng(2).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images)).numpy()
    model = create_model(name, num_classes=expected.shape[1])
    variables = convert_state_dict(name, reference.state_dict())
    logits = jax.jit(functools.partial(model.apply, train=False))(variables, images.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
