"""The Flax ENAS fixed child equals an independent PyTorch implementation of the reference semantics."""

import functools

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util
from parity import randomise_batch_norm

from jaxnets.models import create_model
from jaxnets.reference import torch_enas

# Six layers (reductions after layers 1 and 3) using all six ops, with skips from the stem and across
# both reductions.
ARC = "0  4 1  1 0 1  5 1 0 1  2 0 1 1 0  3 1 0 0 1 1"


@pytest.mark.parametrize("separable_as_full_conv", [False, True])
def test_fixed_child_matches_pytorch(separable_as_full_conv):
    config = dict(num_layers=6, num_filters=8, num_branches=6, num_classes=10,
                  separable_as_full_conv=separable_as_full_conv)
    torch.manual_seed(0)
    reference = torch_enas.ENASMacroChild(arc=ARC, **config).eval()
    randomise_batch_norm(reference, seed=1)
    images = np.random.default_rng(2).standard_normal((2, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images)).numpy()

    model = create_model("enas_macro", arc=ARC, **config)
    variables = torch_enas.to_flax_variables(reference.state_dict())
    target = jax.eval_shape(model.init, jax.random.key(0), images.transpose(0, 2, 3, 1))
    assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda s: s.shape, target), "parameter trees differ"
    assert len(traverse_util.flatten_dict(variables["params"])) == len(traverse_util.flatten_dict(target["params"]))

    logits = jax.jit(functools.partial(model.apply, train=False))(variables, images.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
