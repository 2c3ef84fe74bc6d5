"""Preprocessing in TensorFlow: decode, augment, normalise; per example, then per batch. Randomness is stateless.

A per-example stage takes an explicit `seed` (shape [2] int64), a per-batch stage explicit `uniforms` ([B, k]
numbers in [0, 1)), both derived by the pipeline from (config.seed, global batch size, position of the example
in the stream), so what a run sees is a pure function of the config and the step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tensorflow as tf

from jaxnets.data.datasets import EVAL_CROP_FRACTION, DatasetSpec


def _decode(image: tf.Tensor, channels: int) -> tf.Tensor:
    if image.dtype == tf.string:  # still encoded (read with tfds.decode.SkipDecoding)
        image = tf.io.decode_image(image, channels=channels, expand_animations=False)
        image.set_shape([None, None, channels])
    return image


def _normalise(image: tf.Tensor, spec: DatasetSpec) -> tf.Tensor:
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(spec.mean)) / tf.constant(spec.std)


def _resize(images: tf.Tensor, size: int) -> tf.Tensor:
    # A batch [B, H, W, C], bilinear with antialiasing, as torchvision's Resize on tensors; none at the native size.
    if images.shape[1] == size and images.shape[2] == size:
        return tf.cast(images, tf.float32)
    return tf.image.resize(images, [size, size], method="bilinear", antialias=True)


def _pad_and_random_crop(images: tf.Tensor, pad: int, uniforms: tf.Tensor) -> tf.Tensor:
    # torchvision RandomCrop(size, padding=pad) on each image of a batch: zero padding, then a uniformly placed
    # crop; its offsets (0..2 * pad) from the example's two uniform numbers in [0, 1).
    _, height, width, _ = images.shape
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    offsets = tf.cast(uniforms * (2 * pad + 1), tf.int32)  # (a float32 uniform is < 1: at most 2 * pad)
    rows = offsets[:, :1] + tf.range(height)  # [B, height]: the padded rows each crop takes
    columns = offsets[:, 1:] + tf.range(width)
    return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), columns, axis=2, batch_dims=1)


def _random_flip_left_right(images: tf.Tensor, uniforms: tf.Tensor) -> tf.Tensor:
    flip = uniforms < 0.5  # [B]
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def cifar(images: tf.Tensor, spec: DatasetSpec, image_size: int, augment: bool,
          uniforms: tf.Tensor | None) -> tf.Tensor:
    images = tf.ensure_shape(images, [None, 32, 32, 3])  # [B, 32, 32, 3] uint8
    if augment:
        images = _pad_and_random_crop(images, 4, uniforms[:, :2])
        images = _random_flip_left_right(images, uniforms[:, 2])
    return _normalise(_resize(images, image_size), spec)  # [B, S, S, 3] float32


def digits(images: tf.Tensor, spec: DatasetSpec, image_size: int, augment: bool,
           uniforms: tf.Tensor | None) -> tf.Tensor:
    # Only a random shift of up to one pixel (of 8): flips and rotations change what a digit means.
    images = tf.ensure_shape(images, [None, 8, 8, 1])  # [B, 8, 8, 1] uint8, 0..255
    if augment:
        images = _pad_and_random_crop(images, 1, uniforms)
    return _normalise(_resize(images, image_size), spec)  # [B, S, S, 1] float32


def folder_decode(image: tf.Tensor, spec: DatasetSpec, image_size: int, augment: bool, seed: tf.Tensor) -> tf.Tensor:
    # Your own images, still encoded: decoded to RGB (grey is repeated, an alpha channel dropped) and resized to
    # image_size x image_size (a non-square image is stretched) one by one, as their sizes differ.
    del spec, augment, seed
    image = tf.image.resize(_decode(image, 3), [image_size, image_size], method="bilinear", antialias=True)
    return tf.ensure_shape(image, [image_size, image_size, 3])  # [S, S, 3] float32


def folder(images: tf.Tensor, spec: DatasetSpec, image_size: int, augment: bool,
           uniforms: tf.Tensor | None) -> tf.Tensor:
    # Then CIFAR's augmentation scaled to the size (a random shift of up to 1/8 of the side, and a horizontal flip).
    if augment:
        images = _pad_and_random_crop(images, max(1, image_size // 8), uniforms[:, :2])
        images = _random_flip_left_right(images, uniforms[:, 2])
    return _normalise(images, spec)  # [B, S, S, 3] float32


def imagenet_train(image: tf.Tensor, spec: DatasetSpec, image_size: int, augment: bool, seed: tf.Tensor) -> tf.Tensor:
    if not augment:
        return imagenet_eval(image, spec, image_size, augment, seed)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    # Inception-style random-resized crop: area 8%-100% of the image, aspect ratio 3/4-4/3, 10 attempts,
    # the whole image when all fail. TF samples the aspect ratio uniformly (torchvision: log-uniform).
    shape = tf.image.extract_jpeg_shape(image) if image.dtype == tf.string else tf.shape(image)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=crop_seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)
    if image.dtype == tf.string:  # decode only the crop: the JPEG fast path
        window = tf.stack([offset_y, offset_x, height, width])
        image = tf.image.decode_and_crop_jpeg(image, window, channels=3)
    else:
        image = tf.image.crop_to_bounding_box(image, offset_y, offset_x, height, width)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return _normalise(image, spec)  # [S, S, 3] float32


def imagenet_eval(image: tf.Tensor, spec: DatasetSpec, image_size: int, augment: bool, seed: tf.Tensor) -> tf.Tensor:
    del augment, seed
    image = _decode(image, 3)  # [h, w, 3] uint8
    # Resize the shorter side to image_size / 0.875, then the central image_size square.
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = round(image_size / EVAL_CROP_FRACTION) / tf.reduce_min(shape)
    resized_shape = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, resized_shape, method="bilinear", antialias=True)
    top, left = (resized_shape[0] - image_size) // 2, (resized_shape[1] - image_size) // 2
    image = tf.image.crop_to_bounding_box(image, top, left, image_size, image_size)
    return _normalise(image, spec)  # [S, S, 3] float32


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """A family's preprocessing in two stages. Per example, what depends on the example's own size (decoding,
    resizing, ImageNet's random crop, seeded by the example's `seed`); then per batch, what is the same for every
    image of the batch (shifts, flips, normalising), as one TF op over the batch instead of one per example (for
    8x8 digits that is 10x less host CPU per batch). `per_batch` takes `draws` uniform numbers per example."""

    per_example: Callable[[tf.Tensor, DatasetSpec, int, bool, tf.Tensor], tf.Tensor] | None = None
    per_batch: Callable[[tf.Tensor, DatasetSpec, int, bool, tf.Tensor | None], tf.Tensor] | None = None
    draws: int = 0


FAMILIES = {
    "cifar": Preprocessing(per_batch=cifar, draws=3),
    "digits": Preprocessing(per_batch=digits, draws=2),
    "imagenet": Preprocessing(per_example=imagenet_train),  # (imagenet_eval when augment is False)
    "folder": Preprocessing(per_example=folder_decode, per_batch=folder, draws=3),
}
