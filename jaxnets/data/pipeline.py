"""TFDS + tf.data input pipelines: an infinite, resumable train stream and a padded, masked eval pass.

The train stream is a pure function of (config.seed, global batch size, step), the same for any number
of processes:
    epoch e = the train split shuffled with a seed drawn from (config.seed, e),
    stream = epoch start_epoch, start_epoch + 1, ... (batches run across epoch boundaries),
    global batch b = stream positions [b * G, (b + 1) * G), G = local batch x process_count,
    process i takes rows [i * L, (i + 1) * L) of each global batch (L = local batch),
    augmentation of the example at stream position p is keyed by (config.seed, p) (per-batch augmentation draws
    row p mod G of a table keyed by (config.seed, p // G)),
so `train_iterator(..., start_step=k)` skips to exactly where an uninterrupted run is after k steps,
without replaying earlier epochs, and a run resumed on another number of hosts sees the same batches.
The price: every process reads every record of the split (and keeps only its own rows before decoding and
augmenting them); for the in-memory datasets that is nothing, for ImageNet each host reads the split's bytes.

Nothing here downloads: a dataset that is not prepared fails at once with how to prepare it (the bundled
digits prepare themselves from the package). Host-side work stays in tf.data; the trainer moves batches
to devices.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np
from etils import epath

from jaxnets.data import audio_stages, preprocess
from jaxnets.data import digits as _digits  # noqa: F401  (registers the jaxnets_digits builder)
from jaxnets.data.availability import available_data, not_prepared_error, scan_sound, split_name, tfds_is_mocked
from jaxnets.data.datasets import DataConfig, DatasetInfo, check_data_config
from jaxnets.data.tf_imports import tf, tfds
from jaxnets.errors import ConfigError

Batch = dict[str, np.ndarray]

try:  # JAX owns the accelerators; TF only runs the host-side pipeline.
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF already initialised its devices; nothing we can do, and nothing breaks.
    pass


# tf.data traces the pipelines' functions into graphs as they are written: their branches are on static dtypes and
# shapes and on Python flags, so autograph's rewrite of their source (and of all they call) is not needed. Skipping
# it saves ~0.7 s of CPU at a pipeline's first start (quickstart's train and eval pipelines: 2.1 s -> 1.4 s).
_as_written = tf.autograph.experimental.do_not_convert


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    return builder.data_path.exists() and builder.is_prepared()  # (is_prepared alone logs a warning when absent)


class _SoundFolder:
    """What a sound dataset is read from instead of a TFDS builder: its clips, as the scan lists them
    (jaxnets.data.audio_stages)."""

    def __init__(self, data: DataConfig):
        self.data = data


def _stages(data: DataConfig) -> preprocess.Preprocessing:
    return audio_stages.preprocessing(data) if data.spec.family == "audio" else preprocess.FAMILIES[data.spec.family]


def _builder(data: DataConfig) -> tfds.core.DatasetBuilder | _SoundFolder:
    if data.spec.family == "audio":  # (scanned by available_data)
        return _SoundFolder(data)
    if data.spec.family == "folder":  # (scanned by available_data)
        return tfds.folder_dataset.ImageFolder(data.spec.tfds_name)
    builder = tfds.builder(data.spec.tfds_name, data_dir=data.data_dir, try_gcs=False)
    if tfds_is_mocked() or _is_prepared(builder):
        return builder
    if data.spec.family == "digits":  # bundled: prepares itself offline, in a few seconds
        try:
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        except OSError:
            if not _is_prepared(builder):
                raise
            # else another process sharing data_dir finished first and won the rename
        return tfds.builder(data.spec.tfds_name, data_dir=data.data_dir, try_gcs=False)  # reads the metadata
    raise not_prepared_error(data, builder.data_dir_root)


def _num_examples(builder: tfds.core.DatasetBuilder | _SoundFolder, split: Any) -> int:
    if isinstance(builder, _SoundFolder):
        return audio_stages.num_examples(builder.data, split)
    if builder.info.splits:  # the prepared dataset's metadata
        return builder.info.splits[split].num_examples
    # tfds.testing.mock_data: no metadata, but the mocked dataset knows its (split-independent) length.
    return int(builder.as_dataset(split=split).cardinality())


def _read(builder: tfds.core.DatasetBuilder | _SoundFolder, data: DataConfig, split: Any) -> tf.data.Dataset:
    if isinstance(builder, _SoundFolder):  # clips: decoded where config.cache keeps them, else their paths
        return audio_stages.read(data, split)
    # ImageNet stays JPEG-encoded until the crop is known (decode_and_crop_jpeg), and your own images until
    # they are resized (a shuffle buffer or cache of full-size photos would not fit in memory); small fixed-size
    # images are decoded at read, so that a cache holds uint8 pixels and a resume skips without decoding cost.
    encoded = data.spec.family in ("imagenet", "folder")
    decoders = {"image": tfds.decode.SkipDecoding()} if encoded else None
    part = None
    if data.spec.family == "folder":  # ImageFolder reads whole splits only: a part of one is skip + take
        instructions = builder.info.splits[split].file_instructions  # one "shard" per split; none when empty
        part = (instructions[0].skip, instructions[0].take) if instructions else (0, 0)
        split = split_name(split)
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,  # file order is part of the deterministic example order
        decoders=decoders,
        read_config=tfds.ReadConfig(try_autocache=False),  # config.cache decides
    )
    if part is not None:
        skip, take = part
        ds = ds.skip(skip).take(take)
    return ds.map(_as_written(lambda ex: {"image": ex["image"], "label": ex["label"]}))  # drop ids, file names


def _with_options(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def dataset_info(config: Any) -> DatasetInfo:
    """Classes, batch image shape and split sizes; reads metadata only (prepares the bundled digits)."""
    data = available_data(config)
    builder = _builder(data)
    if data.spec.family == "audio":
        class_names = scan_sound(data).class_names
    else:
        class_names = tuple(getattr(builder.info.features["label"], "names", ()))
    if data.spec.family == "folder":
        _check_folder_classes(data, class_names)
    return DatasetInfo(
        num_classes=len(class_names) if data.spec.family in ("folder", "audio") else data.spec.num_classes,
        image_shape=data.sound.input_shape if data.sound else (data.image_size, data.image_size, data.spec.channels),
        num_train_examples=_num_examples(builder, data.train_split),
        num_eval_examples=_num_examples(builder, data.eval_split),
        class_names=class_names,
    )


def _check_folder_classes(data: DataConfig, class_names: tuple[str, ...]) -> None:
    # ImageFolder takes its classes from every split folder under the root, a run only from its training split.
    train_dir = epath.Path(data.spec.tfds_name).expanduser() / split_name(data.train_split)
    extra = sorted(set(class_names) - {p.name for p in train_dir.iterdir() if p.is_dir()})
    if extra:
        raise ConfigError(f"config.dataset: the class {extra[0]!r} is in another split folder of {data.spec.tfds_name} "
                          f"but not in {train_dir}: every class needs training images")


def _check_batch(local_batch_size: int, process_index: int, process_count: int) -> None:
    if not (isinstance(local_batch_size, numbers.Integral) and local_batch_size > 0):
        raise ValueError(f"local_batch_size must be a positive int, got {local_batch_size!r}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")


def train_iterator(
    config: Any, local_batch_size: int, *, start_step: int = 0, process_index: int = 0, process_count: int = 1
) -> Iterator[Batch]:
    """Infinite {"image": float32 [B, H, W, C], "label": int32 [B]}; batch `start_step` of the stream first."""
    data = available_data(config)
    _check_batch(local_batch_size, process_index, process_count)
    start_step = int(start_step)
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    local_batch_size = int(local_batch_size)
    builder = _builder(data)
    num_examples = _num_examples(builder, data.train_split)
    if num_examples < 1:
        raise ValueError(f"config.train_split: {data.train_split!r} has no examples")
    examples = _read(builder, data, data.train_split)
    if data.cache:
        examples = examples.cache()
    buffer_size = min(data.shuffle_buffer, num_examples)

    @_as_written
    def epoch(e: tf.Tensor) -> tf.data.Dataset:  # -> (stream position, example) for epoch e
        shuffle_seed = tf.random.stateless_uniform([], [data.seed, e], minval=None, maxval=None, dtype=tf.int64)
        shuffled = examples.shuffle(buffer_size, seed=shuffle_seed, reshuffle_each_iteration=False)
        return shuffled.enumerate(start=e * num_examples)

    stages = _stages(data)
    global_batch_size = local_batch_size * process_count
    example_key = tf.constant([data.seed, 0], tf.int64)  # -> one seed per stream position
    batch_key = tf.constant([data.seed, 1], tf.int64)  # -> one table of uniform numbers per global batch

    @_as_written
    def mine(position: tf.Tensor, example: dict[str, tf.Tensor]) -> tf.Tensor:  # this process's rows only
        return (position % global_batch_size) // local_batch_size == process_index

    @_as_written
    def prepare_example(position: tf.Tensor, example: dict[str, tf.Tensor]):
        seed = tf.random.experimental.stateless_fold_in(example_key, position)
        return position, {**example, "image": stages.per_example(example["image"], data.spec, data.image_size,
                                                                 data.augmentation, seed)}

    @_as_written
    def prepare_batch(positions: tf.Tensor, examples: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        images, uniforms = examples["image"], None
        draws = stages.draws(data.augmentation) + stages.device_draws
        if draws:
            # Global batch b draws a [G, draws] table keyed by b, and each example takes the row of its position in
            # b: a pure function of (config.seed, G, position), whichever process takes the example. (A local batch
            # never straddles two global batches: `offset` is a multiple of G and each process keeps L rows of each.)
            table_seed = tf.random.experimental.stateless_fold_in(batch_key, positions[0] // global_batch_size)
            table = tf.random.stateless_uniform([global_batch_size, draws], table_seed)
            uniforms = tf.gather(table, positions % global_batch_size)
        images = stages.per_batch(images, data.spec, data.image_size, data.augmentation, uniforms)
        batch = {"image": images, "label": tf.cast(examples["label"], tf.int32)}
        if stages.device_draws:  # the augmentation made on the accelerator takes its numbers from here
            batch["augment"] = uniforms[:, -stages.device_draws:]
        return batch

    start_epoch, offset = divmod(start_step * global_batch_size, num_examples)
    ds = tf.data.Dataset.counter(start_epoch).flat_map(epoch).skip(offset)
    if process_count > 1:
        ds = ds.filter(mine)  # before decoding and augmenting
    if stages.per_example is not None:
        ds = ds.map(prepare_example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local_batch_size, drop_remainder=True)  # a local batch: consecutive positions of one global batch
    ds = ds.map(prepare_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return _with_options(ds).as_numpy_iterator()


def heldout_iterator(
    config: Any, local_batch_size: int, *, start_step: int = 0, process_index: int = 0, process_count: int = 1
) -> Iterator[Batch]:
    """The eval split (which a search holds out of its training data) as an endless stream like
    `train_iterator`'s, unaugmented and shuffled with its own seed: for a task that learns on held-out batches
    (the ENAS controller's rewards). Batch `start_step` of the stream first."""
    heldout = config.copy_and_resolve_references()
    with heldout.unlocked():
        heldout.train_split = check_data_config(config).eval_split
        heldout.augment = False
        heldout.seed = (config.seed + 1) % 2**31  # not the train stream's order
    return train_iterator(heldout, local_batch_size, start_step=start_step, process_index=process_index,
                          process_count=process_count)


def eval_iterator(
    config: Any, local_batch_size: int, *, process_index: int = 0, process_count: int = 1
) -> Iterator[Batch]:
    """One pass of {"image", "label", "mask": bool [B]}: the same number of batches on every process, padding
    masked, so that every eval example is seen exactly once across processes."""
    return iter(eval_batches(config, local_batch_size, process_index=process_index, process_count=process_count))


class EvalBatches:
    """The eval set as batches, iterable once per evaluation: built once, and (with config.cache) decoded once."""

    def __init__(self, batches: tf.data.Dataset):
        self._batches = batches

    def __iter__(self) -> Iterator[Batch]:
        return self._batches.as_numpy_iterator()


def eval_batches(config: Any, local_batch_size: int, *, process_index: int = 0, process_count: int = 1) -> EvalBatches:
    """`eval_iterator`'s batches, for a run that evaluates many times."""
    data = available_data(config)
    _check_batch(local_batch_size, process_index, process_count)
    local_batch_size = int(local_batch_size)
    builder = _builder(data)
    splits = tfds.even_splits(data.eval_split, n=process_count)  # sizes differ by at most one
    counts = [_num_examples(builder, split) for split in splits]
    num_batches = math.ceil(max(counts) / local_batch_size)
    num_examples = counts[process_index]
    stages = _stages(data)
    per_example = stages.evaluation_per_example(data.eval_crop)
    no_seed = tf.zeros([2], tf.int64)

    @_as_written
    def prepare_example(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image = example["image"]
        if per_example is not None:
            image = per_example(image, data.spec, data.image_size, None, no_seed)
        return {"image": image, "label": tf.cast(example["label"], tf.int32), "mask": tf.constant(True)}

    @_as_written
    def prepare_batch(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        images = batch["image"]
        images = stages.per_batch(images, data.spec, data.image_size, None, None)
        mask = tf.reshape(batch["mask"], [-1] + [1] * (images.shape.rank - 1))
        images = tf.where(mask, images, 0.0)  # padding stays zeros
        return {**batch, "image": images}

    ds = _read(builder, data, splits[process_index]).apply(tf.data.experimental.assert_cardinality(num_examples))
    ds = ds.map(prepare_example, num_parallel_calls=tf.data.AUTOTUNE)
    image = ds.element_spec["image"]
    pad = {"image": tf.zeros(image.shape, image.dtype), "label": tf.constant(0, tf.int32), "mask": tf.constant(False)}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(num_batches * local_batch_size - num_examples))
    ds = ds.batch(local_batch_size, drop_remainder=True).map(prepare_batch, num_parallel_calls=tf.data.AUTOTUNE)
    if data.cache:  # the eval images never change: later passes read the preprocessed batches from memory
        ds = ds.cache()
    return EvalBatches(_with_options(ds.prefetch(tf.data.AUTOTUNE)))
