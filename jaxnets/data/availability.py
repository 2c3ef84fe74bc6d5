"""Is the data there? Answered without TensorFlow, whose import is most of a launch's first seconds (3-5 s of a
2-core CPU): a run that cannot read its dataset says so as fast as one with a bad learning rate.

The answer here is only ever "certainly not" or "maybe": a TFDS dataset is refused when its folder holds no
prepared version at all; anything else (prepared, being prepared, remote storage, the bundled digits, a mocked
TFDS) is left to the pipeline's full check, which reads the metadata with TFDS.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
from typing import Any

from jaxnets.data.audio_folder import AudioScan, scan_audio_folder
from jaxnets.data.datasets import DataConfig, check_data_config
from jaxnets.data.folder import scan_folder
from jaxnets.errors import ConfigError, DatasetNotPreparedError
from jaxnets.sound.synth import ensure_timbres

# What TFDS writes into each prepared version, `<root>/<name>[/<config>]/<version>/dataset_info.json`
# (tensorflow_datasets.core.constants.DATASET_INFO_FILENAME).
_PREPARED_MARK = "dataset_info.json"


def split_name(split: Any) -> str:
    """"train" of "train", "train[:90%]" or tfds.even_splits' parts of them."""
    return (split if isinstance(split, str) else split.split).split("[")[0]


def available_data(config: Any) -> DataConfig:
    """`check_data_config`, then: a folder dataset's folders scanned (its image size filled in), a sound dataset's
    clips checked (the generated timbres written first), a TFDS dataset with nothing prepared in its data_dir
    refused (DatasetNotPreparedError, saying how to prepare it)."""
    data = check_data_config(config)
    if data.spec.family == "folder":
        return _scanned_folder(data)
    if data.spec.family == "audio":
        _check_one_split_folder(data)
        scan_sound(data)
        return data
    if data.spec.prepare:  # (the bundled digits prepare themselves)
        _refuse_if_certainly_unprepared(data)
    return data


def tfds_root(data_dir: str | None) -> str:
    """The folder TFDS reads a dataset from for `config.data_dir` (TFDS's own default when None)."""
    if data_dir is None:
        return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))
    return os.path.expanduser(data_dir)


def not_prepared_error(data: DataConfig, root: str) -> DatasetNotPreparedError:
    return DatasetNotPreparedError(
        f"config.dataset: {data.dataset!r} is not prepared in {root}: {data.spec.prepare.format(data_dir=root)}"
    )


def _refuse_if_certainly_unprepared(data: DataConfig) -> None:
    root = tfds_root(data.data_dir)
    if "://" in root or tfds_is_mocked():  # remote storage: TFDS's file systems answer that, through TensorFlow
        return
    folder = pathlib.Path(root) / data.spec.tfds_name
    if not any(folder.glob(f"*/{_PREPARED_MARK}")) and not any(folder.glob(f"*/*/{_PREPARED_MARK}")):
        raise not_prepared_error(data, root)


def tfds_is_mocked() -> bool:
    # Under tfds.testing.mock_data no dataset is on disk and download_and_prepare is a no-op that the mock
    # installs; as_dataset then serves random examples, so there is nothing to check or prepare. (A mock needs
    # TFDS imported: when it is not, nothing is mocked.)
    tfds = sys.modules.get("tensorflow_datasets")
    if tfds is None:
        return False
    return "mock_data" in getattr(tfds.core.DatasetBuilder.download_and_prepare, "__qualname__", "")


def sound_root(data: DataConfig) -> str:
    """The folder of a sound dataset: an audio_folder's own, or the generated timbres' in data_dir (written there
    on first use)."""
    if data.spec.num_classes == 0:  # audio_folder:/path
        return data.spec.tfds_name
    root = tfds_root(data.data_dir)
    if "://" in root:
        raise ConfigError(f"config.data_dir: {data.dataset} is generated into a local folder, not {root}")
    try:
        return ensure_timbres(root)
    except OSError as e:
        raise ConfigError(f"config.data_dir: cannot write the generated {data.dataset} into {root} "
                          f"({e.strerror or e}): set config.data_dir to a writable folder") from None


def scan_sound(data: DataConfig) -> AudioScan:
    return scan_audio_folder(sound_root(data), split_name(data.train_split), split_name(data.eval_split),
                             data.sound.sample_rate)


def _check_one_split_folder(data: DataConfig) -> None:
    for field in ("train_split", "eval_split"):
        if "+" in getattr(data, field):
            raise ConfigError(f"config.{field}={getattr(data, field)!r}: a folder dataset reads one split folder "
                              "(or a part of it, such as 'train[:90%]'), not a sum of splits")


def _scanned_folder(data: DataConfig) -> DataConfig:
    _check_one_split_folder(data)
    scan = scan_folder(data.spec.tfds_name, split_name(data.train_split), split_name(data.eval_split),
                       resizing=data.image_size is not None)
    return data if data.image_size is not None else dataclasses.replace(data, image_size=scan.image_size[0])
