"""The dataset table and the data fields of a config: what each dataset is, validated without TensorFlow.

Everything here imports without TensorFlow, so a trainer can validate a config (and a GPU box without TF
can read the table) before the input pipeline is ever built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from jaxnets.data.audio_folder import AUDIO_FOLDER_PREFIX, audio_folder_root
from jaxnets.data.augmentation import Augmentation, section_defaults
from jaxnets.data.augmentation import resolve as resolve_augmentation
from jaxnets.data.folder import folder_root
from jaxnets.sound.config import SoundConfig
from jaxnets.sound.config import resolve as resolve_sound
from jaxnets.values import is_int

# Per-channel statistics of the training pixels scaled to [0, 1] (std over all train pixels, not the
# average per-image std that some CIFAR code quotes).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The bundled digits' 1,347 training images after the 0..16 -> 0..255 rescale (tests/test_data.py checks).
DIGITS_MEAN, DIGITS_STD = (0.3058,), (0.3761,)


# The train stream's version: how a run's batches and their augmentation follow from its config
# (jaxnets.data.pipeline). Checkpoints record it; raise it whenever the same config would give other batches or
# other augmentation, so that a run is never resumed on a stream it did not have. 2: the first recorded (the
# per-global-batch augmentation tables and the sound datasets); checkpoints before it recorded none.
DATA_STREAM_VERSION = 2
# The config fields that make a run's stream (for a sound dataset also config.audio's training fields).
STREAM_FIELDS = ("seed", "train_split", "global_batch_size", "shuffle_buffer", "augment", "augmentation")

# ImageNet's evaluation resizes the shorter side to image_size / 0.875 (256 for 224) and takes the central crop.
EVAL_CROP_FRACTION = 0.875
# How an evaluated image becomes image_size x image_size (`config.eval_crop`; a choice for image folders only):
# "resize" the whole image (stretched when it is not square), or "centre": its shorter side to
# image_size / EVAL_CROP_FRACTION and the central square, as ImageNet's (torchvision's Resize + CenterCrop).
EVAL_CROPS = ("resize", "centre")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    tfds_name: str
    family: Literal["cifar", "imagenet", "digits", "folder", "audio"]  # selects the preprocessing
    num_classes: int  # 0 for a folder: its class folders tell (jaxnets.data.folder)
    channels: int
    train_split: str
    eval_split: str
    image_size: int | None  # default of config.image_size (None for a folder: the images' own size)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    cache: bool  # default of config.cache: whether the split fits in host memory
    shuffle_buffer: int  # default of config.shuffle_buffer
    prepare: str  # how to prepare it; {data_dir} is filled in
    flip: bool = True  # default of config.augmentation.flip
    crop: str = "shift"  # default of config.augmentation.crop (jaxnets.data.augmentation)
    eval_crop: str = "resize"  # default of config.eval_crop (EVAL_CROPS)


def _build(name: str) -> str:
    # `tfds build` is the usual way, but its CLI needs apache-beam installed (tensorflow/datasets#5463).
    args = f"{name} --data_dir {{data_dir}}"
    return f"`python -m jaxnets.data.prepare {args}` (or `tfds build {args}`)"


def _downloadable(name: str) -> str:
    return f"run {_build(name)} on a machine with network access, or copy a prepared {{data_dir}}/{name} here"


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        "cifar10", "cifar", 10, 3, "train", "test", 32, CIFAR10_MEAN, CIFAR10_STD,
        cache=True, shuffle_buffer=50_000, prepare=_downloadable("cifar10"),
    ),
    "cifar100": DatasetSpec(
        "cifar100", "cifar", 100, 3, "train", "test", 32, CIFAR100_MEAN, CIFAR100_STD,
        cache=True, shuffle_buffer=50_000, prepare=_downloadable("cifar100"),
    ),
    "imagenet2012": DatasetSpec(
        "imagenet2012", "imagenet", 1000, 3, "train", "validation", 224, IMAGENET_MEAN, IMAGENET_STD,
        cache=False, shuffle_buffer=16_384, crop="random_resized", eval_crop="centre",
        prepare="put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org) in "
        "{data_dir}/downloads/manual (or pass --manual_dir DIR), then run " + _build("imagenet2012"),
    ),
    # Six generated timbres (jaxnets/sound/synth.py), written into data_dir as a sound folder on first use.
    "timbres": DatasetSpec(
        "jaxnets_timbres", "audio", 6, 1, "train", "test", None, (0.0,), (1.0,),
        cache=True, shuffle_buffer=288, prepare="", flip=False, crop="none",
    ),
    # UCI 8x8 handwritten digits, shipped in jaxnets/data/digits: prepares itself, offline, on first use.
    "digits": DatasetSpec(
        "jaxnets_digits", "digits", 10, 1, "train", "test", 8, DIGITS_MEAN, DIGITS_STD,
        cache=True, shuffle_buffer=1_347, prepare="", flip=False,  # a mirrored digit is not that digit
    ),
}  # fmt: skip


def folder_spec(root: str) -> DatasetSpec:
    """Your own images in root/train/<class>/*, root/test/<class>/* (`config.dataset = "folder:" + root`).
    Normalised with ImageNet's statistics, as photos usually are; augmented like CIFAR (shift and flip)."""
    return DatasetSpec(
        root, "folder", 0, 3, "train", "test", None, IMAGENET_MEAN, IMAGENET_STD,
        cache=False, shuffle_buffer=10_000, prepare="",
    )  # fmt: skip


def audio_folder_spec(root: str) -> DatasetSpec:
    """Your own sound clips in root/train/<class>/*, root/test/<class>/* (`config.dataset = "audio_folder:" +
    root`). The networks' input is their log-mel spectrogram (config.audio; normalised by jaxnets.sound.frontend)."""
    return DatasetSpec(
        root, "audio", 0, 1, "train", "test", None, (0.0,), (1.0,),
        cache=False, shuffle_buffer=10_000, prepare="", flip=False, crop="none",
    )  # fmt: skip


def dataset_spec(name: Any) -> DatasetSpec | None:
    """The spec of a `config.dataset` value: a DATASETS name, "folder:/path" or "audio_folder:/path"; None when it
    is none of them."""
    if not isinstance(name, str):
        return None
    root = folder_root(name)
    if root is not None:
        return folder_spec(root)
    root = audio_folder_root(name)
    return audio_folder_spec(root) if root is not None else DATASETS.get(name)


class DatasetInfo(NamedTuple):
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C) of the networks' input (sound: mel bins x frames x 1)
    num_train_examples: int  # all processes together
    num_eval_examples: int
    class_names: tuple[str, ...] = ()  # label order; () when the dataset names none


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The data fields of a config with the per-dataset defaults filled in."""

    spec: DatasetSpec
    dataset: str
    data_dir: str | None
    image_size: int
    train_split: str
    eval_split: str
    augment: bool
    augmentation: Augmentation | None  # what augment=True does (None when it is False)
    eval_crop: str  # EVAL_CROPS
    shuffle_buffer: int
    cache: bool
    seed: int
    sound: SoundConfig | None = None  # config.audio, resolved, for a sound dataset (its batches are clips)


def _field(config: Any, name: str, default: Any) -> Any:
    """`config[name]`, or the dataset's `default` when it is None (the config's way of saying "the dataset's")."""
    value = config.get(name, None)
    return default if value is None else value


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data_dir": (lambda v: v is None or isinstance(v, str), "a path or None"),
    "image_size": (lambda v: v is None or (is_int(v) and v > 0), "a positive int"),
    "train_split": (lambda v: isinstance(v, str) and v.strip() != "", "a TFDS split such as 'train' or 'train[:90%]'"),
    "eval_split": (lambda v: isinstance(v, str) and v.strip() != "", "a TFDS split such as 'test' or 'train[90%:]'"),
    "augment": (lambda v: isinstance(v, bool), "True or False"),
    "eval_crop": (lambda v: v in EVAL_CROPS, "'resize' (the whole image) or 'centre' (ImageNet's centre crop)"),
    "shuffle_buffer": (lambda v: is_int(v) and v > 0, "a positive int"),
    "cache": (lambda v: isinstance(v, bool), "True or False"),
    "seed": (lambda v: is_int(v) and 0 <= v < 2**31, "an int in [0, 2**31)"),
}


def _required(config: Any, name: str) -> Any:
    if name not in config:
        raise ValueError(f"config.{name} is missing (jaxnets.train.base_config() has every field)")
    return config[name]


def check_data_config(config: Any) -> DataConfig:
    """Validates the data fields of `config` and returns them with defaults filled in.

    Reads `dataset` (a DATASETS name or "folder:/path"), `augment` and `seed`, and (None or absent means the
    dataset's own value from DATASETS) `data_dir`, `image_size`, `train_split`, `eval_split`, `eval_crop`,
    `shuffle_buffer`, `cache`. The defaults of the fields themselves live in `jaxnets.train.base_config`. Raises
    ValueError naming the field. Touches no files (a folder's image size and classes are read by the pipeline).
    """
    name = _field(config, "dataset", None)
    spec = dataset_spec(name)
    if spec is None:
        raise ValueError(f"config.dataset: unknown dataset {name!r}; known: {', '.join(DATASETS)}, "
                         f"folder:/path/to/your/images, or {AUDIO_FOLDER_PREFIX}/path/to/your/clips")
    data = DataConfig(
        spec=spec,
        dataset=name,
        data_dir=_field(config, "data_dir", None),
        image_size=_field(config, "image_size", spec.image_size),
        train_split=_field(config, "train_split", spec.train_split),
        eval_split=_field(config, "eval_split", spec.eval_split),
        augment=_required(config, "augment"),
        augmentation=None,
        eval_crop=_field(config, "eval_crop", spec.eval_crop),
        shuffle_buffer=_field(config, "shuffle_buffer", spec.shuffle_buffer),
        cache=_field(config, "cache", spec.cache),
        seed=_required(config, "seed"),
    )
    for field, (ok, expected) in _CHECKS.items():
        value = getattr(data, field)
        if not ok(value):
            raise ValueError(f"config.{field}: expected {expected}, got {value!r}")
    if data.eval_crop != spec.eval_crop and spec.family != "folder":
        raise ValueError(f"config.eval_crop: {name} is always evaluated with eval_crop={spec.eval_crop!r}; the "
                         "choice is an image folder's (leave it None)")
    if spec.family == "audio":
        return _sound_data(config, data)
    augmentation = resolve_augmentation(config.get("augmentation", None), spec.flip, spec.crop)  # (checked always)
    return dataclasses.replace(data, augmentation=augmentation if data.augment else None)


def _sound_data(config: Any, data: DataConfig) -> DataConfig:
    """A sound dataset: config.audio says what the images' fields say for pictures, which must stay unset."""
    if data.image_size is not None:
        raise ValueError(f"config.image_size: {data.dataset} is sound; its input size is config.audio's (n_mels x "
                         "the frames of clip_seconds): leave image_size None")
    defaults = section_defaults()
    images_only = {k: v for k, v in dict(config.get("augmentation", None) or {}).items()
                   if v is not None and (tuple(v) if isinstance(v, list) else v) != defaults.get(k)}
    if images_only:
        raise ValueError(f"config.augmentation.{sorted(images_only)[0]}: image augmentation does not apply to "
                         f"{data.dataset}, which is sound; its augmentation is config.audio's (SpecAugment and gain)")
    return dataclasses.replace(data, sound=resolve_sound(config.get("audio", None)))
