"""torchvision conversion accounts for every tensor, and weight files are read without unpickling."""

import sys

import numpy as np
import pytest
import torch
from flax import traverse_util
from parity import randomise_batch_norm
from torch_twins import TWINS

from jaxnets.convert.files import load_arrays
from jaxnets.convert.torchvision import convert_state_dict, load_torchvision_weights, supported_models
from jaxnets.models import model_entry

TWINNED = [name for name in supported_models() if model_entry(name).reference.twin is not None]


@pytest.fixture(scope="module")
def mobilenet_state_dict():
    torch.manual_seed(0)
    model = TWINS["mobilenet_v2"](num_classes=10)
    return {k: v.numpy() for k, v in model.state_dict().items()}


def to_torch_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":  # HWIO -> OIHW, [in, out] -> [out, in]
        return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    return value


@pytest.mark.parametrize("name", TWINNED)
def test_every_tensor_of_the_twin_converts_back_to_itself(name):
    """Each converted leaf, put back into torch's layout, is exactly one of the state dict's tensors, and each
    tensor is used once (random BN: no two tensors are equal)."""
    torch.manual_seed(0)
    twin = TWINS[model_entry(name).reference.twin](num_classes=10)
    randomise_batch_norm(twin, seed=1)
    state_dict = {k: v.numpy() for k, v in twin.state_dict().items() if not k.endswith("num_batches_tracked")}
    by_content = {(v.shape, v.tobytes()): k for k, v in state_dict.items()}
    assert len(by_content) == len(state_dict), "two tensors of the twin are equal: the check would be ambiguous"

    variables = convert_state_dict(name, state_dict)
    flat = traverse_util.flatten_dict(variables)
    sources = []
    for path, value in flat.items():
        value = to_torch_layout(path, np.asarray(value))
        sources.append(by_content.get((value.shape, value.tobytes()), f"nothing ({'/'.join(path)})"))
    assert sorted(sources) == sorted(state_dict)
    classifier = model_entry(name).reference.torch_keys.classifier
    assert variables["params"][classifier.split(".")[0]]["kernel"].shape[-1] == 10


def test_every_torch_key_mapping_is_checked_against_a_twin():
    """A convertible model without a twin (a deeper variant) shares its family's mapping with one that has."""
    checked = {model_entry(name).reference.torch_keys for name in TWINNED}
    for name in supported_models():
        assert model_entry(name).reference.torch_keys in checked, f"{name}: its key mapping has no twin to check it"


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
    with pytest.raises(ValueError, match="no torchvision conversion for 'enas_macro'; supported: .*resnext50_32x4d"):
        convert_state_dict("enas_macro", mobilenet_state_dict)
    with pytest.raises(ValueError, match="no torchvision conversion for 'cifar_mobilenet_v2'; supported: "):
        load_torchvision_weights("cifar_mobilenet_v2", "unused.safetensors")
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
            "mobilenet_v2"} <= set(supported_models())


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


def test_pth_files_are_read_with_weights_only_where_torch_is_installed(tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.arange(3.0, dtype=torch.float16), "steps": torch.tensor(7)}, path)
    arrays = load_arrays(path)
    assert arrays["w"].dtype == np.float32 and arrays["steps"].dtype == np.int64  # half precision read as float32
    np.testing.assert_array_equal(arrays["w"], [0, 1, 2])
    monkeypatch.setitem(sys.modules, "torch", None)  # as where PyTorch is not installed
    with pytest.raises(ValueError, match=r"is a PyTorch file and PyTorch is not installed here; convert it once, "
                                         r"where torch is installed: .*st.save_file"):
        load_arrays(path)
    other = tmp_path / "weights.ckpt"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"is not a .safetensors, .npz, .pth, .pt file"):
        load_arrays(other)


def test_a_truncated_weights_file_is_one_line(tmp_path):
    np.savez(tmp_path / "whole.npz", w=np.arange(1000.0))
    (tmp_path / "weights.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:500])
    (tmp_path / "weights.safetensors").write_bytes(b"\x00\x01 not a whole file")
    for name in ("weights.safetensors", "weights.npz"):
        with pytest.raises(ValueError, match=rf"^'\S+{name}' cannot be read: \S") as raised:
            load_arrays(tmp_path / name)
        assert "\n" not in str(raised.value)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, w=np.array([{"code": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_arrays(path)
