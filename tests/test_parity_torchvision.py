"""jaxnets with converted weights reproduces its PyTorch twin's logits (float32, CPU, eval mode).

Every registered model whose entry names a twin with torchvision's key names, at the size its reference is meant
for and, for ImageNet models, also at 64x64 (the ENAS child's twin uses jaxnets' names: test_parity_enas.py).
"""

import pytest
import torch
from flax import traverse_util
from parity import assert_logits_match, num_params, randomise_batch_norm
from torch_twins import TWINS

from jaxnets.convert.torchvision import convert_state_dict
from jaxnets.models import create_model, list_models, model_entry

TWINNED = [name for name in list_models()
           if model_entry(name).reference.twin is not None and model_entry(name).reference.torch_keys is not None]


def sizes(name: str) -> list[int]:
    image_size = model_entry(name).reference.image_size
    return [image_size, 64] if image_size == 224 else [image_size]


def test_the_twinned_models_include_each_family():
    expected = {"resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "cifar_resnext50", "resnext29_8x64d"}
    assert expected <= set(TWINNED)


@pytest.mark.parametrize("name,size", [(name, size) for name in TWINNED for size in sizes(name)])
def test_logits_match_the_twin(name, size):
    model = create_model(name)
    torch.manual_seed(0)
    twin = TWINS[model_entry(name).reference.twin](num_classes=model.num_classes)
    randomise_batch_norm(twin, seed=1)
    variables = convert_state_dict(name, twin.state_dict())
    if size == sizes(name)[0]:  # (once per model) parameter for parameter
        assert num_params(twin) == sum(leaf.size for leaf in traverse_util.flatten_dict(variables["params"]).values())
        published = model_entry(name).reference.params
        assert published is None or num_params(twin) == published
    assert_logits_match(model, variables, twin, size, name)


def test_registry_twin_names_exist():
    twins = {name: model_entry(name).reference.twin for name in list_models()}
    assert {twin for twin in twins.values() if twin is not None} <= set(TWINS), twins

