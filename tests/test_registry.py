"""Model names, registry entries, overrides and exact parameter counts."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from jaxnets.models import Reference, create_model, list_models, model_entry

REQUIRED_NAMES = [
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "resnext152_32x4d", "resnext29_8x64d",
    "resnext29_16x64d", "cifar_resnext50", "cifar_resnext101", "cifar_resnext152", "mobilenet_v2",
    "cifar_mobilenet_v2", "enas_macro", "enas_macro_shared", "resnet18", "resnet34", "resnet50", "resnet101",
]


def num_params(name: str, image_size: int, **overrides) -> int:
    model = create_model(name, **overrides)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
    return sum(leaf.size for leaf in jax.tree.leaves(shapes["params"]))


def test_every_documented_name_is_registered():
    assert set(REQUIRED_NAMES) <= set(list_models())


@pytest.mark.parametrize("name", [name for name in list_models() if model_entry(name).reference.params is not None])
def test_parameter_counts_equal_the_published_ones(name):
    reference = model_entry(name).reference
    assert num_params(name, reference.image_size) == reference.params


def test_torchvision_models_carry_their_published_counts():
    published = {  # torchvision's model cards (1000 classes)
        "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
        "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336, "resnext101_64x4d": 83_455_272,
        "mobilenet_v2": 3_504_872,
    }
    assert {name: model_entry(name).reference.params for name in published} == published


def test_an_entry_describes_its_model():
    entry = model_entry("cifar_resnext50")
    assert entry.name == "cifar_resnext50" and isinstance(entry.reference, Reference)
    assert entry.reference.image_size == 32 and entry.defaults["num_classes"] == 100
    assert type(create_model("cifar_resnext50")) is entry.module
    assert model_entry("mobilenet_v2").reference.torch_keys.classifier == "classifier.1.weight"
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.reference.params = 1


@pytest.mark.parametrize(
    "name,expected_millions",
    [  # pytorch-cifar100 (100 classes), with its grouped first 1x1
        ("cifar_resnext50", 14.79),
        ("cifar_resnext101", 25.30),
        ("cifar_resnext152", 33.34),
        ("cifar_mobilenet_v2", 2.37),
        # the paper's ResNeXt-29 (10 classes): 34.4M and 68.1M
        ("resnext29_8x64d", 34.43),
        ("resnext29_16x64d", 68.16),
    ],
)
def test_cifar_parameter_counts_match_references(name, expected_millions):
    assert round(num_params(name, 32) / 1e6, 2) == expected_millions


def test_dense_first_1x1_gives_the_reference_count_without_the_seed_quirk():
    assert round(num_params("cifar_resnext50", 32, grouped_first_1x1=False) / 1e6, 2) == 23.18


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'resnext51'; known models: .*resnext50_32x4d"):
        create_model("resnext51")
    with pytest.raises(ValueError, match=r"unknown model 'resnext51'; known models: .*resnext50_32x4d"):
        model_entry("resnext51")


def test_unknown_override_names_the_field():
    with pytest.raises(ValueError, match=r"model 'mobilenet_v2' has no field\(s\) num_class;"):
        create_model("mobilenet_v2", num_class=10)


def test_overrides_reach_the_module():
    assert create_model("resnext50_32x4d", num_classes=7, dtype=jnp.bfloat16).num_classes == 7
