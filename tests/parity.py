"""Shared by the parity tests against PyTorch modules."""

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
