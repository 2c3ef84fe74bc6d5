"""torchvision conversion accounts for every tensor, and weight files are read without unpickling."""

import numpy as np
import pytest
import torch

from jaxnets.convert.files import load_arrays
from jaxnets.convert.torchvision import convert_state_dict, load_torchvision_weights
from jaxnets.reference import torchvision_mobilenetv2


@pytest.fixture(scope="module")
def mobilenet_state_dict():
    torch.manual_seed(0)
    model = torchvision_mobilenetv2.mobilenet_v2(num_classes=10)
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_num_classes_comes_from_the_classifier(mobilenet_state_dict):
    variables = convert_state_dict("mobilenet_v2", mobilenet_state_dict)
    assert variables["params"]["classifier"]["kernel"].shape == (1280, 10)
    np.testing.assert_array_equal(  # OIHW [32, 3, 3, 3] -> HWIO [3, 3, 3, 32]
        variables["params"]["features_0"]["conv"]["kernel"],
        mobilenet_state_dict["features.0.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        variables["batch_stats"]["features_3"]["dw_bn"]["var"], mobilenet_state_dict["features.3.conv.1.1.running_var"]
    )


def test_missing_tensor_is_named(mobilenet_state_dict):
    broken = dict(mobilenet_state_dict)
    del broken["features.5.conv.2.weight"]
    with pytest.raises(ValueError, match="missing 1 tensor.*features_5/project_conv/kernel"):
        convert_state_dict("mobilenet_v2", broken)


def test_unexpected_tensor_is_named(mobilenet_state_dict):
    extra = {**mobilenet_state_dict, "features.19.0.weight": np.zeros((8, 8, 1, 1), np.float32)}
    with pytest.raises(ValueError, match="unexpected key 'features.19.0.weight'"):
        convert_state_dict("mobilenet_v2", extra)


def test_wrong_shape_is_named(mobilenet_state_dict):
    wrong = {**mobilenet_state_dict, "features.1.conv.1.weight": np.zeros((16, 32, 1, 1, 1), np.float32)}
    with pytest.raises(ValueError, match="unexpected key 'features.1.conv.1.weight'"):
        convert_state_dict("mobilenet_v2", wrong)
    wrong = {**mobilenet_state_dict, "features.1.conv.1.weight": np.zeros((16, 16, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"'features.1.conv.1.weight' has shape \(1, 1, 16, 16\) after conversion"):
        convert_state_dict("mobilenet_v2", wrong)


def test_unsupported_model_lists_the_supported_ones(mobilenet_state_dict):
    with pytest.raises(ValueError, match="no torchvision conversion for 'enas_macro'; supported: resnext50_32x4d"):
        convert_state_dict("enas_macro", mobilenet_state_dict)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_weight_files_round_trip(tmp_path, mobilenet_state_dict, suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".npz":
        np.savez(path, **mobilenet_state_dict)
    else:
        from safetensors.numpy import save_file

        save_file(mobilenet_state_dict, str(path))
    model, variables = load_torchvision_weights("mobilenet_v2", path)
    assert model.num_classes == 10
    np.testing.assert_array_equal(variables["params"]["classifier"]["bias"], mobilenet_state_dict["classifier.1.bias"])


def test_pickled_files_are_refused_with_the_conversion_command(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"is not a .safetensors or .npz file .*st.save_file"):
        load_arrays(path)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, w=np.array([{"code": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_arrays(path)
