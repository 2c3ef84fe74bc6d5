"""Preprocessing in TensorFlow: decode, augment, normalise; per example, then per batch. Randomness is stateless.

A per-example stage takes an explicit `seed` (shape [2] int64), a per-batch stage explicit `uniforms` ([B, k]
numbers in [0, 1)), both derived by the pipeline from (config.seed, global batch size, position of the example
in the stream), so what a run sees is a pure function of the config and the step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from jaxnets.data.augmentation import ASPECT_RATIOS, Augmentation
from jaxnets.data.datasets import EVAL_CROP_FRACTION, DatasetSpec
from jaxnets.data.tf_imports import tf

# TensorFlow's JPEG decoder defaults to libjpeg's fast integer IDCT, which differs from PIL's (torchvision's and
# timm's loaders) by up to 65 levels on fine detail; the accurate one decodes to PIL's pixels exactly
# (tests/test_folder_dataset.py).
JPEG_IDCT = "INTEGER_ACCURATE"


def _decode(image: tf.Tensor, channels: int) -> tf.Tensor:
    if image.dtype == tf.string:  # still encoded (read with tfds.decode.SkipDecoding): a JPEG or a PNG
        image = tf.cond(
            tf.io.is_jpeg(image),
            lambda: tf.io.decode_jpeg(image, channels=channels, dct_method=JPEG_IDCT),
            lambda: tf.io.decode_png(image, channels=channels),  # (16-bit PNGs scaled to 8 bits)
        )
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


def _random_resized_crop_batch(images: tf.Tensor, size: int, scale: tuple[float, float],
                               uniforms: tf.Tensor) -> tf.Tensor:
    # torchvision's RandomResizedCrop on each image: a whole-pixel crop of a uniform share of the area in `scale`
    # and a log-uniform aspect ratio in [3/4, 4/3] (its sides clipped to the image), placed uniformly, resized to
    # size x size (bilinear, antialiased).
    _, height, width, _ = images.shape
    area = (scale[0] + (scale[1] - scale[0]) * uniforms[:, 0]) * (height * width)
    low, high = math.log(ASPECT_RATIOS[0]), math.log(ASPECT_RATIOS[1])
    ratio = tf.exp(low + (high - low) * uniforms[:, 1])  # width / height
    crop_height = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32), 1, height)
    crop_width = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32), 1, width)
    top = tf.minimum(tf.cast(uniforms[:, 2] * tf.cast(height - crop_height + 1, tf.float32), tf.int32),
                     height - crop_height)
    left = tf.minimum(tf.cast(uniforms[:, 3] * tf.cast(width - crop_width + 1, tf.float32), tf.int32),
                      width - crop_width)

    def crop(args):
        image, y, x, h, w = args
        window = tf.image.crop_to_bounding_box(image, y, x, h, w)
        return tf.image.resize(window, [size, size], method="bilinear", antialias=True)

    channels = images.shape[-1]
    return tf.map_fn(crop, (tf.cast(images, tf.float32), top, left, crop_height, crop_width),
                     fn_output_signature=tf.TensorSpec([size, size, channels], tf.float32))


def _color_jitter(images: tf.Tensor, strength: float, uniforms: tf.Tensor) -> tf.Tensor:
    # Brightness, contrast, saturation in this order, each factor uniform in [1 - strength, 1 + strength], on
    # pixel values in [0, 255] (float), clipped back to that range after each (as torchvision's ColorJitter).
    factors = 1.0 - strength + 2.0 * strength * uniforms  # [B, 3]
    brightness, contrast, saturation = (factors[:, i, None, None, None] for i in range(3))
    images = tf.clip_by_value(tf.cast(images, tf.float32) * brightness, 0.0, 255.0)
    grey = tf.image.rgb_to_grayscale(images) if images.shape[-1] == 3 else images
    mean = tf.reduce_mean(grey, axis=[1, 2, 3], keepdims=True)
    images = tf.clip_by_value(mean + (images - mean) * contrast, 0.0, 255.0)
    if images.shape[-1] == 3:
        grey = tf.image.rgb_to_grayscale(images)
        images = tf.clip_by_value(grey + (images - grey) * saturation, 0.0, 255.0)
    return images


def _augment_batch(images: tf.Tensor, augmentation: Augmentation | None, size: int, uniforms: tf.Tensor | None,
                   crop_per_example: bool = False) -> tf.Tensor:
    """The batch's augmentation (all of it but ImageNet's crop, drawn per example), then resized to size x size.
    The uniform numbers' columns: the crop's, the flip's, the jitter's (`Augmentation.batch_draws`)."""
    column = 0
    if augmentation is not None:
        crop = augmentation.batch_crop(crop_per_example)
        if crop == "shift":  # by up to an eighth of the side (CIFAR: 4 px of 32; digits: 1 of 8)
            images = _pad_and_random_crop(images, max(1, images.shape[1] // 8), uniforms[:, :2])
            column = 2
        elif crop == "random_resized":
            images = _random_resized_crop_batch(images, size, augmentation.scale, uniforms[:, :4])
            column = 4
    if augmentation is not None and augmentation.flip:
        images = _random_flip_left_right(images, uniforms[:, column])
        column += 1
    images = _resize(images, size)
    if augmentation is not None and augmentation.color_jitter:
        images = _color_jitter(images, augmentation.color_jitter, uniforms[:, column:column + 3])
    return images  # [B, S, S, C] float32, pixel values in [0, 255]


def cifar(images: tf.Tensor, spec: DatasetSpec, image_size: int, augmentation: Augmentation | None,
          uniforms: tf.Tensor | None) -> tf.Tensor:
    images = tf.ensure_shape(images, [None, 32, 32, 3])  # [B, 32, 32, 3] uint8
    return _normalise(_augment_batch(images, augmentation, image_size, uniforms), spec)  # [B, S, S, 3] float32


def digits(images: tf.Tensor, spec: DatasetSpec, image_size: int, augmentation: Augmentation | None,
           uniforms: tf.Tensor | None) -> tf.Tensor:
    images = tf.ensure_shape(images, [None, 8, 8, 1])  # [B, 8, 8, 1] uint8, 0..255
    return _normalise(_augment_batch(images, augmentation, image_size, uniforms), spec)  # [B, S, S, 1] float32


def folder_decode(image: tf.Tensor, spec: DatasetSpec, image_size: int, augmentation: Augmentation | None,
                  seed: tf.Tensor) -> tf.Tensor:
    # Your own images, still encoded: decoded to RGB (grey is repeated, an alpha channel dropped) and resized to
    # image_size x image_size (a non-square image is stretched) one by one, as their sizes differ.
    del spec, augmentation, seed
    image = tf.image.resize(_decode(image, 3), [image_size, image_size], method="bilinear", antialias=True)
    return tf.ensure_shape(image, [image_size, image_size, 3])  # [S, S, 3] float32


def folder_centre_decode(image: tf.Tensor, spec: DatasetSpec, image_size: int, augmentation: Augmentation | None,
                         seed: tf.Tensor) -> tf.Tensor:
    # A folder evaluated with config.eval_crop="centre": as ImageNet's evaluation (torchvision's Resize + CenterCrop).
    del spec, augmentation, seed
    return _imagenet_eval_pixels(image, image_size)


def folder(images: tf.Tensor, spec: DatasetSpec, image_size: int, augmentation: Augmentation | None,
           uniforms: tf.Tensor | None) -> tf.Tensor:
    return _normalise(_augment_batch(images, augmentation, image_size, uniforms), spec)  # [B, S, S, 3] float32


def imagenet_decode(image: tf.Tensor, spec: DatasetSpec, image_size: int, augmentation: Augmentation | None,
                    seed: tf.Tensor) -> tf.Tensor:
    # The per-example stage: the evaluation's resize and centre crop, or the training's random-resized crop.
    del spec
    if augmentation is None or augmentation.crop != "random_resized":
        return _imagenet_eval_pixels(image, image_size)
    # Inception-style random-resized crop: area in `scale` (8%-100%), aspect ratio 3/4-4/3, 10 attempts, the whole
    # image when all fail. TF samples the aspect ratio uniformly (torchvision: log-uniform).
    crop_seed = tf.random.experimental.stateless_split(seed, 2)[0]  # (the crops of the runs before the flip moved)
    shape = tf.image.extract_jpeg_shape(image) if image.dtype == tf.string else tf.shape(image)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=crop_seed,
        min_object_covered=0.0,
        aspect_ratio_range=ASPECT_RATIOS,
        area_range=augmentation.scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)
    if image.dtype == tf.string:  # decode only the crop: the JPEG fast path
        window = tf.stack([offset_y, offset_x, height, width])
        image = tf.image.decode_and_crop_jpeg(image, window, channels=3, dct_method=JPEG_IDCT)
    else:
        image = tf.image.crop_to_bounding_box(image, offset_y, offset_x, height, width)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.ensure_shape(image, [image_size, image_size, 3])  # [S, S, 3] float32, normalised per batch


def imagenet_eval(image: tf.Tensor, spec: DatasetSpec, image_size: int, augment: bool = False,
                  seed: tf.Tensor | None = None) -> tf.Tensor:
    """One image (encoded or decoded) as ImageNet's evaluation sees it: [S, S, 3] float32, normalised."""
    del augment, seed
    return _normalise(_imagenet_eval_pixels(image, image_size), spec)


def _imagenet_eval_pixels(image: tf.Tensor, image_size: int) -> tf.Tensor:
    image = _decode(image, 3)  # [h, w, 3] uint8
    # Resize the shorter side to image_size / 0.875, then the central image_size square.
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = round(image_size / EVAL_CROP_FRACTION) / tf.reduce_min(shape)
    resized_shape = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, resized_shape, method="bilinear", antialias=True)
    top, left = (resized_shape[0] - image_size) // 2, (resized_shape[1] - image_size) // 2
    image = tf.image.crop_to_bounding_box(image, top, left, image_size, image_size)
    return tf.ensure_shape(image, [image_size, image_size, 3])  # [S, S, 3] float32, normalised per batch


def imagenet(images: tf.Tensor, spec: DatasetSpec, image_size: int, augmentation: Augmentation | None,
             uniforms: tf.Tensor | None) -> tf.Tensor:
    # A random_resized crop was drawn per example (imagenet_decode); a shift, the flip and the jitter are the batch's.
    images = _augment_batch(images, augmentation, image_size, uniforms, crop_per_example=True)
    return _normalise(images, spec)  # [B, S, S, 3] float32


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """A family's preprocessing in two stages. Per example, what depends on the example's own size (decoding,
    resizing, ImageNet's random crop, seeded by the example's `seed`); then per batch, what is the same for every
    image of the batch (shifts, flips, jitter, normalising), as one TF op over the batch instead of one per example
    (for 8x8 digits that is 10x less host CPU per batch). `per_batch` takes `draws(augmentation)` uniform numbers
    per example. At evaluation both stages get augmentation None."""

    per_example: Callable[[tf.Tensor, DatasetSpec, int, Augmentation | None, tf.Tensor], tf.Tensor] | None
    per_batch: Callable[[tf.Tensor, DatasetSpec, int, Augmentation | None, tf.Tensor | None], tf.Tensor]
    crop_per_example: bool = False  # ImageNet: its random_resized crop is drawn on the decoded photo
    # The per-example stage of an evaluation with config.eval_crop="centre", where the family lets one choose it
    # (a folder); None: per_example evaluates as the family always does.
    centre_per_example: Callable[[tf.Tensor, DatasetSpec, int, Augmentation | None, tf.Tensor], tf.Tensor] | None = None
    # Uniform numbers per training example that the batch carries as "augment" for an augmentation made on the
    # accelerator (sound: jaxnets.sound.frontend), keyed like per_batch's.
    device_draws: int = 0
    # The per-example stage of every evaluation, where it is not per_example's (sound: its eval crops).
    evaluation: Callable[[tf.Tensor, DatasetSpec, int, Augmentation | None, tf.Tensor], tf.Tensor] | None = None

    def draws(self, augmentation: Augmentation | None) -> int:
        return 0 if augmentation is None else augmentation.batch_draws(self.crop_per_example)

    def evaluation_per_example(self, eval_crop: str):
        """The per-example stage of an evaluation under `config.eval_crop`."""
        if self.evaluation is not None:
            return self.evaluation
        return self.centre_per_example if eval_crop == "centre" and self.centre_per_example else self.per_example


FAMILIES = {
    "cifar": Preprocessing(per_example=None, per_batch=cifar),
    "digits": Preprocessing(per_example=None, per_batch=digits),
    "imagenet": Preprocessing(per_example=imagenet_decode, per_batch=imagenet, crop_per_example=True),
    "folder": Preprocessing(per_example=folder_decode, per_batch=folder, centre_per_example=folder_centre_decode),
}
