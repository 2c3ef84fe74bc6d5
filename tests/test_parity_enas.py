"""The Flax ENAS fixed child equals an independent PyTorch implementation of the reference semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from parity import ENAS_ARC, assert_logits_match, num_params, randomise_batch_norm
from torch_twins import TWINS, enas

from jaxnets.models import create_model, model_entry
from jaxnets.models.enas import PUBLISHED_FINAL_ARC, parse_arc

TWIN = TWINS[model_entry("enas_macro").reference.twin]


@pytest.mark.parametrize("separable_as_full_conv", [False, True])
def test_fixed_child_matches_pytorch(separable_as_full_conv):
    config = dict(num_layers=6, num_filters=8, num_branches=6, num_classes=10,
                  separable_as_full_conv=separable_as_full_conv)
    torch.manual_seed(0)
    reference = TWIN(arc=ENAS_ARC, **config)
    randomise_batch_norm(reference, seed=1)
    model = create_model("enas_macro", arc=ENAS_ARC, **config)
    variables = enas.to_flax_variables(reference.state_dict())
    target = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda s: s.shape, target), "parameter trees differ"
    assert len(traverse_util.flatten_dict(variables["params"])) == len(traverse_util.flatten_dict(target["params"]))
    assert_logits_match(model, variables, reference, 16, f"enas_macro {config}")


def test_published_child_has_the_twins_parameter_count():
    """The released 24-layer, 96-filter child (the twin parses the published arc with its own parser)."""
    model = create_model("enas_macro")
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert sum(leaf.size for leaf in jax.tree.leaves(shapes["params"])) == num_params(TWIN(num_classes=10))


def test_published_arc_agrees_with_the_twins_own_copy_and_parser():
    assert PUBLISHED_FINAL_ARC.split() == enas.PUBLISHED_FINAL_ARC.split()
    ours = [(layer.op, layer.skips) for layer in parse_arc(PUBLISHED_FINAL_ARC, 24, 4).layers]
    assert ours == enas.parse_arc(enas.PUBLISHED_FINAL_ARC, 24, 4)
