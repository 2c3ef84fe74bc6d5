"""`--config.init_from` from a PyTorch state dict: torchvision's or timm's names, .pth (read with
weights_only=True), .safetensors or .npz; a run on another class count starts a fresh classifier and loads
everything else; every other mismatch is refused in one line before anything compiles or is written.
(A run's own checkpoint as the source: test_checkpoint.py.)"""

import argparse
import logging

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
from flax import traverse_util
from helpers import compiles_nothing, load_recipe
from parity import randomise_batch_norm
from torch_twins import mobilenetv2, resnet

from jaxnets import checkpoints as ckpt
from jaxnets.convert.torchvision import convert_state_dict
from jaxnets.data import DatasetInfo
from jaxnets.errors import CheckpointNotFoundError, IncompatibleCheckpointError
from jaxnets.train import build_trainer, parallel, train_and_evaluate

FOUR_CLASSES = DatasetInfo(num_classes=4, image_shape=(32, 32, 3), num_train_examples=64, num_eval_examples=64)


def four_class_trainer(model: str):
    """A 4-class run of `model` (one device): what init_from is checked against."""
    config = load_recipe("quickstart", model=model, image_size=32)
    config.model_overrides = {}
    return build_trainer(config, devices=jax.devices()[:1], dataset_info=FOUR_CLASSES)


def source_for(trainer, path):
    return ckpt.init_source(path, trainer.checkpoint_meta()["config"], trainer.abstract_state())


def flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.fixture(scope="module")
def resnext50(tmp_path_factory):
    """A 1000-class ResNeXt-50 (the PyTorch twin, random BN statistics) as torchvision's .pth and .safetensors,
    and as a training script's checkpoint (its arguments beside nn.DataParallel's "module." names under
    "state_dict")."""
    directory = tmp_path_factory.mktemp("weights")
    twin = resnet.resnext50_32x4d()
    randomise_batch_norm(twin, seed=0)
    state_dict = twin.state_dict()
    torch.save(state_dict, directory / "resnext50_32x4d.pth")
    safetensors.torch.save_file(state_dict, directory / "resnext50_32x4d.safetensors")
    torch.save({"epoch": 7, "args": argparse.Namespace(lr=0.1, model="resnext50_32x4d"),  # as timm's train.py
                "state_dict": {f"module.{k}": v for k, v in state_dict.items()}}, directory / "checkpoint.pth.tar.pth")
    return directory, state_dict


def test_a_1000_class_torchvision_resnext50_starts_a_4_class_run_with_its_weights(resnext50, caplog):
    directory, state_dict = resnext50
    trainer = four_class_trainer("resnext50_32x4d")
    fresh = trainer.init_state()
    expected = flat(convert_state_dict("resnext50_32x4d", state_dict))
    for name in ("resnext50_32x4d.pth", "resnext50_32x4d.safetensors", "checkpoint.pth.tar.pth"):
        source = source_for(trainer, str(directory / name))
        assert source.fresh == (("params", "fc", "bias"), ("params", "fc", "kernel")), name
        with caplog.at_level(logging.INFO, logger="jaxnets"):
            state = ckpt.initialise_from(fresh, source, parallel.replicated(trainer.mesh))
        loaded = {**flat({"params": state.params}), **flat({"batch_stats": state.batch_stats})}
        assert loaded.keys() == expected.keys()
        for path, value in loaded.items():
            if path.startswith("params/fc/"):  # the fresh 4-class classifier
                np.testing.assert_array_equal(value, flat({"params": fresh.params})[path], err_msg=name)
            else:
                np.testing.assert_array_equal(value, expected[path], err_msg=f"{name}: {path}")
        assert loaded["params/fc/kernel"].shape == (2048, 4)
        arrays = sum(not k.endswith("num_batches_tracked") for k in state_dict) - 2  # all but fc.weight, fc.bias
        assert caplog.records[-1].getMessage() == (
            f"config.init_from: loaded {arrays} arrays from {directory / name}; new: fc (bias 4, kernel 2048x4); "
            "step, optimizer and rng start afresh")
    # The file's own numbers, in jaxnets' layout (HWIO kernels): read independently of the conversion.
    np.testing.assert_array_equal(loaded["params/layer2_0/conv2/kernel"],
                                  state_dict["layer2.0.conv2.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(loaded["batch_stats/layer4_2/bn3/var"], state_dict["layer4.2.bn3.running_var"])


def timm_names(state_dict: dict) -> dict:
    """torchvision's mobilenet_v2 keys renamed as timm's mobilenetv2_100 names them (timm/models/efficientnet.py:
    conv_stem/bn1, blocks.<stage>.<block> with 1, 2, 3, 4, 3, 3, 1 blocks a stage, conv_head/bn2, classifier;
    the first block is depthwise-separable: conv_dw, bn1, conv_pw, bn2)."""
    top = {"features.0.0": "conv_stem", "features.0.1": "bn1", "features.18.0": "conv_head", "features.18.1": "bn2",
           "classifier.1": "classifier"}
    blocks = [(stage, block) for stage, count in enumerate((1, 2, 3, 4, 3, 3, 1)) for block in range(count)]
    for index, (stage, block) in enumerate(blocks, start=1):
        layers = ({"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"} if index == 1 else
                  {"conv.0.0": "conv_pw", "conv.0.1": "bn1", "conv.1.0": "conv_dw", "conv.1.1": "bn2",
                   "conv.2": "conv_pwl", "conv.3": "bn3"})
        top.update({f"features.{index}.{k}": f"blocks.{stage}.{block}.{v}" for k, v in layers.items()})
    renamed = {}
    for key, value in state_dict.items():
        module, leaf = key.rsplit(".", 1)
        renamed[f"{top[module]}.{leaf}"] = value
    return renamed


def test_a_timm_named_mobilenet_v2_file_loads_as_the_torchvision_one(tmp_path):
    """timm names MobileNetV2's layers by stage and block: the same arrays must load. (timm's ResNet and ResNeXt
    keys are torchvision's: the files of the test above.)"""
    twin = mobilenetv2.mobilenet_v2()
    randomise_batch_norm(twin, seed=1)
    state_dict = twin.state_dict()
    safetensors.torch.save_file(state_dict, tmp_path / "torchvision.safetensors")
    timm = timm_names(state_dict)
    assert "blocks.3.2.conv_pwl.weight" in timm and "features.10.conv.2.weight" in state_dict
    safetensors.torch.save_file(timm, tmp_path / "timm.safetensors")
    trainer = four_class_trainer("mobilenet_v2")
    sharding = parallel.replicated(trainer.mesh)
    torchvision_source = source_for(trainer, str(tmp_path / "torchvision.safetensors"))
    timm_source = source_for(trainer, str(tmp_path / "timm.safetensors"))
    assert timm_source.fresh == torchvision_source.fresh == (("params", "classifier", "bias"),
                                                            ("params", "classifier", "kernel"))
    expected, got = flat(torchvision_source.read(sharding)), flat(timm_source.read(sharding))
    assert got.keys() == expected.keys() and len(got) == 314 - 52  # 52 BN layers' num_batches_tracked
    for path in got:
        np.testing.assert_array_equal(got[path], expected[path], err_msg=path)


@pytest.mark.parametrize("case", ["resnet50_for_resnext50", "enas", "pickled_code", "missing", "not_a_state_dict"])
def test_a_weight_file_that_cannot_start_the_run_is_refused_in_one_line_before_compiling(case, resnext50, tmp_path):
    directory, _ = resnext50
    model, path = "resnext50_32x4d", tmp_path / "weights.pth"
    if case == "resnet50_for_resnext50":
        torch.save(resnet.resnet50().state_dict(), path)
        message = (r"config.init_from: \S+weights.pth: 'layer1.0.conv1.weight' has shape \(1, 1, 64, 64\) after "
                   r"conversion, resnext50_32x4d expects \(1, 1, 64, 128\)")  # (ResNeXt's bottleneck is wider)
    elif case == "enas":
        model, path = "enas_macro", directory / "resnext50_32x4d.safetensors"
        message = r"config.init_from: \S+: no torchvision conversion for 'enas_macro'; supported: .*resnext50_32x4d"
    elif case == "pickled_code":
        torch.save({"weight": torch.zeros(2), "args": logging.LogRecord("x", 0, "", 0, "", None, None)}, path)
        message = r"config.init_from: \S+weights.pth: .* cannot be read as a PyTorch state dict with weights_only=True"
    elif case == "missing":
        path = tmp_path / "nowhere.safetensors"
        message = r"config.init_from: weights file \S+nowhere.safetensors does not exist"
    else:
        torch.save([torch.zeros(2)], path)
        message = r"config.init_from: \S+weights.pth: \S+ holds no state dict"
    config = load_recipe("quickstart", model=model, init_from=str(path))
    config.model_overrides = {}
    before = sorted(tmp_path.iterdir())
    error = CheckpointNotFoundError if case == "missing" else IncompatibleCheckpointError
    with compiles_nothing(), pytest.raises(error, match=message) as raised:
        train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
    assert "\n" not in str(raised.value)
    assert sorted(p for p in tmp_path.iterdir() if p.name != "run") == before
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file()], "nothing written in the run's workdir"
