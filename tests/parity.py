"""Shared by the tests against the PyTorch twins (tests/torch_twins)."""

import functools

import jax
import numpy as np
import torch


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
