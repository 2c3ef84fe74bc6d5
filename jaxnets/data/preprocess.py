"""Per-example preprocessing in TensorFlow: decode, augment, normalise. Randomness is stateless.

Every random op takes an explicit `seed` (shape [2] int64) derived from (config.seed, process, position of
the example in the stream), so what a run sees is a pure function of the config and the step.
"""

from __future__ import annotations

import tensorflow as tf

from jaxnets.data.datasets import DatasetSpec

# Eval resizes the shorter side to image_size / 0.875 (256 for 224) and takes the central crop.
EVAL_CROP_FRACTION = 0.875


def _decode(image: tf.Tensor, channels: int) -> tf.Tensor:
    if image.dtype == tf.string:  # still encoded (read with tfds.decode.SkipDecoding)
        image = tf.io.decode_image(image, channels=channels, expand_animations=False)
        image.set_shape([None, None, channels])
    return image


def _normalise(image: tf.Tensor, spec: DatasetSpec) -> tf.Tensor:
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(spec.mean)) / tf.constant(spec.std)


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
    # Bilinear with antialiasing, as torchvision's Resize on tensors; a no-op at the native size.
    if image.shape[0] == size and image.shape[1] == size:
        return tf.cast(image, tf.float32)
    return tf.image.resize(image, [size, size], method="bilinear", antialias=True)


def _pad_and_random_crop(image: tf.Tensor, pad: int, seed: tf.Tensor) -> tf.Tensor:
    # torchvision RandomCrop(size, padding=pad): zero padding, then a uniformly placed crop.
    height, width, channels = image.shape
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(padded, [height, width, channels], seed=seed)


def cifar(image: tf.Tensor, spec: DatasetSpec, image_size: int, augment: bool, seed: tf.Tensor) -> tf.Tensor:
    image = tf.ensure_shape(_decode(image, 3), [32, 32, 3])  # [32, 32, 3] uint8
    if augment:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        image = _pad_and_random_crop(image, 4, crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return _normalise(_resize(image, image_size), spec)  # [S, S, 3] float32


def digits(image: tf.Tensor, spec: DatasetSpec, image_size: int, augment: bool, seed: tf.Tensor) -> tf.Tensor:
    # Only a random shift of up to one pixel (of 8): flips and rotations change what a digit means.
    image = tf.ensure_shape(_decode(image, 1), [8, 8, 1])  # [8, 8, 1] uint8, 0..255
    if augment:
        image = _pad_and_random_crop(image, 1, seed)
    return _normalise(_resize(image, image_size), spec)  # [S, S, 1] float32


def folder(image: tf.Tensor, spec: DatasetSpec, image_size: int, augment: bool, seed: tf.Tensor) -> tf.Tensor:
    # Your own images, still encoded: decoded to RGB (grey is repeated, an alpha channel dropped), resized to
    # image_size x image_size (a non-square image is stretched), then CIFAR's augmentation scaled to the size
    # (a random shift of up to 1/8 of the side, and a horizontal flip).
    image = tf.image.resize(_decode(image, 3), [image_size, image_size], method="bilinear", antialias=True)
    if augment:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        image = _pad_and_random_crop(image, max(1, image_size // 8), crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return tf.ensure_shape(_normalise(image, spec), [image_size, image_size, 3])  # [S, S, 3] float32


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


TRAIN = {"cifar": cifar, "digits": digits, "imagenet": imagenet_train, "folder": folder}
EVAL = {"cifar": cifar, "digits": digits, "imagenet": imagenet_eval, "folder": folder}
