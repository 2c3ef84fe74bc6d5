"""BatchNorm folded into the convolution before it (jaxnets.models.folding, what the export writes): exact for a
convolution with a bias of its own, grouped and depthwise ones, with BN statistics far from their initial values;
a convolution whose output is used beyond its BN is caught by folding_error, and the export then keeps BN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from jaxnets.models.folding import conv_batch_norm_pairs, fold_batch_norm, folding_error
from jaxnets.models.layers import Conv
from jaxnets.models.normalization import BatchNorm


class Tower(nn.Module):
    """A dense convolution with a bias, a grouped and a strided depthwise one, each followed by its BN; with
    `residual_before_batch_norm`, the last convolution's output also feeds an add, which a fold cannot respect."""

    residual_before_batch_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(BatchNorm(use_running_average=not train)(Conv(features=8, kernel_size=3, padding=1,
                                                                    use_bias=True)(x)))
        x = nn.relu(BatchNorm(use_running_average=not train)(Conv(features=8, kernel_size=3, padding=1,
                                                                    groups=4)(x)))
        y = Conv(features=8, kernel_size=3, stride=2, padding=1, groups=8)(x)
        z = BatchNorm(use_running_average=not train)(y)
        if self.residual_before_batch_norm:
            z = z + y
        return nn.Dense(features=5)(z.mean(axis=(1, 2)))


def randomised(variables, seed: int = 0):
    """BN scales, shifts, means and variances (and the biases) far from their initial values."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(jax.device_get(variables))
    for path, leaf in flat.items():
        if path[-1] in ("scale", "var"):
            flat[path] = rng.uniform(0.3, 3.0, leaf.shape).astype(np.float32)
        elif path[-1] in ("bias", "mean"):
            flat[path] = rng.normal(0, 0.5, leaf.shape).astype(np.float32)
    return traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize("residual", [False, True])
def test_folding_is_exact_where_the_convolution_feeds_only_its_batch_norm(residual):
    model = Tower(residual_before_batch_norm=residual)
    example = jax.ShapeDtypeStruct((1, 12, 12, 3), jnp.float32)
    variables = randomised(model.init(jax.random.key(0), jnp.zeros(example.shape)))
    assert len(conv_batch_norm_pairs(model, variables, example)) == 3
    error = folding_error(model, variables, fold_batch_norm(model, variables, example), example)
    if residual:
        assert error > 1e-2, "the add receives the normalised output: the check must see it"
    else:
        assert error < 1e-6, error
