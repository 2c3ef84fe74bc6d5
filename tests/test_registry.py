"""Model names, registry entries, overrides and exact parameter counts."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from parity import num_params as twin_num_params

from jaxnets.models import Reference, create_model, list_models, model_entry

REQUIRED_NAMES = [
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "resnext152_32x4d", "resnext29_8x64d",
    "resnext29_16x64d", "cifar_resnext50", "cifar_resnext101", "cifar_resnext152", "mobilenet_v2",
    "cifar_mobilenet_v2", "enas_macro", "enas_macro_shared", "resnet18", "resnet34", "resnet50", "resnet101",
]


def param_shapes(name: str, image_size: int, **overrides) -> dict:
    model = create_model(name, **overrides)
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))["params"]


def num_params(name: str, image_size: int, **overrides) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(param_shapes(name, image_size, **overrides)))


def test_every_documented_name_is_registered():
    assert set(REQUIRED_NAMES) <= set(list_models())


@pytest.mark.parametrize("name", [name for name in list_models() if model_entry(name).reference.params is not None])
def test_parameter_counts_equal_the_published_ones(name):
    reference = model_entry(name).reference
    assert num_params(name, reference.image_size) == reference.params


# Each family once, small: the entry's classifier is what fine-tuning leaves trainable in a linear probe.
@pytest.mark.parametrize("name, overrides", [
    ("resnet18", {}), ("resnext29_8x64d", {"stage_sizes": (1, 1, 1)}), ("mobilenet_v2", {}),
    ("cifar_mobilenet_v2", {}), ("enas_macro", {"num_layers": 2, "arc": "0 1 0", "num_filters": 8}),
])
def test_the_entrys_classifier_is_the_layer_that_gives_the_logits(name, overrides):
    classifier = param_shapes(name, 32, num_classes=7, **overrides)
    for module in model_entry(name).classifier.split("/"):
        classifier = classifier[module]
    assert classifier["kernel"].shape[-1] == 7 and classifier["kernel"].ndim == 2, classifier


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


def counted_by_a_twin(name: str) -> int:
    """The parameter count of the PyTorch twin's code for `name` (tests/torch_twins: it imports nothing from
    jaxnets), at the depth and cardinality of the variant."""
    import torch
    from torch_twins import cifar_mobilenetv2, resnet

    bottleneck = {"cifar_resnext50": [3, 4, 6, 3], "cifar_resnext101": [3, 4, 23, 3], "cifar_resnext152": [3, 4, 36, 3]}
    with torch.device("meta"):  # shapes only: a 68M-parameter net in no time and no memory
        if name in bottleneck:
            twin = resnet.ResNet(resnet.Bottleneck, bottleneck[name], num_classes=100, groups=32, width_per_group=4,
                                 stem="cifar", grouped_first_1x1=True)
        elif name.startswith("resnext29_"):
            cardinality = int(name.split("_")[1].split("x")[0])  # resnext29_<groups>x64d
            twin = resnet.ResNet(resnet.Bottleneck, [3, 3, 3], num_classes=10, groups=cardinality, width_per_group=64,
                                 stage_planes=(64, 128, 256), stem="cifar")
        elif name == "cifar_mobilenet_v2":
            twin = cifar_mobilenetv2.MobileNetV2(num_classes=100)
        elif name == "resnext152_32x4d":
            twin = resnet.ResNet(resnet.Bottleneck, [3, 8, 36, 3], groups=32, width_per_group=4)
        else:
            raise AssertionError(f"no twin builds {name}")
    return twin_num_params(twin)


@pytest.mark.parametrize(
    "name,expected",
    [  # pytorch-cifar100 (weiaicunzai; 100 classes, its grouped first 1x1 and 3-4-36-3 "152"), by its own code
        ("cifar_resnext50", 14_788_772),
        ("cifar_resnext101", 25_303_204),
        ("cifar_resnext152", 33_343_652),
        ("cifar_mobilenet_v2", 2_369_380),
        # the ResNeXt paper's CIFAR nets (10 classes), 34.4M and 68.1M in its Table 7
        ("resnext29_8x64d", 34_426_698),
        ("resnext29_16x64d", 68_155_210),
        # torchvision's ResNeXt layout at [3, 8, 36, 3] (torchvision publishes no resnext152)
        ("resnext152_32x4d", 59_951_400),
    ],
)
def test_parameter_counts_are_exact_integers_from_an_independent_count(name, expected):
    assert num_params(name, 32) == expected
    assert counted_by_a_twin(name) == expected


def test_dense_first_1x1_gives_the_reference_count_without_the_seed_quirk():
    assert num_params("cifar_resnext50", 32, grouped_first_1x1=False) == 23_177_124


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
