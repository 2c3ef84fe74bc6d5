"""The input pipeline's side of a sound dataset (tf.data): clips read, decoded and cut to one length.

    read(data, split)          {"image", "label"}: each clip decoded (mono, at the config's rate) or, uncached, its path
    preprocessing(data)        the per-example crop (random in training, centred or several in evaluation)

Batches of sound datasets hold clips [B, clip_samples] (evaluation with config.audio.eval_crops = k > 1: [B, k,
clip_samples]); in training also "augment" [B, config.audio.augment_draws], the uniform numbers of SpecAugment and
the gain, keyed by (config.seed, stream position) like the images' augmentation. The spectrograms and their
augmentation are made on the accelerator (jaxnets.sound.frontend).
"""

from __future__ import annotations

import types

from jaxnets.data.audio_folder import decode
from jaxnets.data.availability import scan_sound, split_name
from jaxnets.data.datasets import DataConfig
from jaxnets.data.preprocess import Preprocessing
from jaxnets.data.tf_imports import tf, tfds
from jaxnets.errors import ConfigError
from jaxnets.sound.config import SoundConfig


def _part(data: DataConfig, split) -> tuple[tuple[str, int], ...]:
    """The (path, label) pairs of a split such as "train", "train[:90%]" or a tfds.even_splits part of one."""
    clips = scan_sound(data).clips[split_name(split)]
    name = split_name(split)
    try:
        instruction = tfds.core.ReadInstruction.from_spec(split) if isinstance(split, str) else split
        (absolute,) = instruction.to_absolute({name: types.SimpleNamespace(name=name, num_examples=len(clips))})
    except (ValueError, AttributeError, KeyError, AssertionError) as e:
        raise ConfigError(f"config split {split!r} of {data.dataset}: not a part of {name!r} in TFDS's split syntax "
                          f"(such as {name!r} or '{name}[:90%]'): {e}") from None
    return clips[absolute.from_:absolute.to]


def num_examples(data: DataConfig, split) -> int:
    return len(_part(data, split))


def read(data: DataConfig, split) -> tf.data.Dataset:
    """{"image": the clip, "label"}: decoded here where config.cache keeps the clips (decoded once), else the clip's
    path, decoded by the per-example stage, after the shuffle and after a resume's skip and a host's filter."""
    part = _part(data, split)
    paths = tf.constant([path for path, _ in part], tf.string)
    labels = tf.constant([label for _, label in part], tf.int64)
    examples = tf.data.Dataset.from_tensor_slices({"image": paths, "label": labels})
    if not data.cache:
        return examples
    decoded = _decoder(data.sound)
    return examples.map(lambda e: {**e, "image": decoded(e["image"])}, num_parallel_calls=tf.data.AUTOTUNE)


def _decoder(sound: SoundConfig):
    def decoded(clip: tf.Tensor) -> tf.Tensor:
        """A clip's path -> its samples (float32, mono, at sound.sample_rate); samples as they are."""
        if clip.dtype != tf.string:
            return clip
        samples = tf.numpy_function(lambda p: decode(p.decode(), sound.sample_rate), [clip], tf.float32,
                                    stateful=False)
        return tf.ensure_shape(samples, [None])

    return decoded


def _crop(clip: tf.Tensor, samples: int, where: tf.Tensor) -> tf.Tensor:
    """`samples` consecutive samples of `clip`, starting at the fraction where[0] of the room there is; a shorter
    clip is zero padded, placed at the fraction where[1] of the room it leaves."""
    length = tf.shape(clip)[0]
    excess, room = tf.maximum(length - samples, 0), tf.maximum(samples - length, 0)
    start = tf.minimum(tf.cast(where[0] * tf.cast(excess + 1, tf.float32), tf.int32), excess)
    before = tf.minimum(tf.cast(where[1] * tf.cast(room + 1, tf.float32), tf.int32), room)
    clip = tf.pad(clip[start:start + samples], [[before, room - before]])
    return tf.ensure_shape(clip, [samples])


def _random_crop(sound: SoundConfig):
    decoded = _decoder(sound)

    def per_example(clip, spec, image_size, augmentation, seed):  # (the image stages' signature)
        return _crop(decoded(clip), sound.clip_samples, tf.random.stateless_uniform([2], seed))
    return per_example


def _centre_crop(sound: SoundConfig):
    decoded = _decoder(sound)

    def per_example(clip, spec, image_size, augmentation, seed):
        return _crop(decoded(clip), sound.clip_samples, tf.constant([0.5, 0.5]))
    return per_example


def _spread_crops(sound: SoundConfig):
    decoded = _decoder(sound)

    # eval_crops clips, their starts evenly spaced from the clip's start to its end: [k, samples]
    def per_example(clip, spec, image_size, augmentation, seed):
        clip = decoded(clip)
        starts = tf.linspace(0.0, 1.0, sound.eval_crops)
        return tf.stack([_crop(clip, sound.clip_samples, tf.stack([starts[i], 0.5])) for i in range(sound.eval_crops)])
    return per_example


def _as_is(clips, spec, image_size, augmentation, uniforms):
    return tf.cast(clips, tf.float32)


def preprocessing(data: DataConfig) -> Preprocessing:
    """A sound dataset's stages: a random crop in training (the centre one when config.augment is False), the
    centre crop or config.audio.eval_crops spread crops in evaluation; the augmentation's numbers go to the device."""
    sound = data.sound
    return Preprocessing(
        per_example=_random_crop(sound) if data.augment else _centre_crop(sound),
        per_batch=_as_is,
        device_draws=sound.augment_draws if data.augment else 0,
        evaluation=_centre_crop(sound) if sound.eval_crops == 1 else _spread_crops(sound),
    )
