"""Classify image files with a trained run.

    python -m jaxnets.classify photo.jpg more_photos/ --workdir runs/photos --top 3

    classifier = jaxnets.classify.Classifier(WORKDIR)
    probabilities = classifier(images)              # uint8 [N, H, W, C] at the run's evaluation size
    images = classifier.load(["a.jpg", "b.png"])    # image files, resized as the run's evaluation resizes

Each file is decoded with Pillow to the run's channels (RGB, or grey) and resized as the evaluation did (with
Pillow's bilinear resize and uint8 pixels, where the evaluation used TF's in float: round-off apart): the
shorter side to size / 0.875 and the central square for an ImageNet run, the whole image to the run's size for
the others (bilinear, antialiased). The model is `jaxnets.export.serving_function`'s: the same function the
exported files hold.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import jax
import numpy as np
from PIL import Image

from jaxnets.data.datasets import EVAL_CROP_FRACTION
from jaxnets.data.folder import IMAGE_SUFFIXES
from jaxnets.errors import UserError
from jaxnets.export import serving_function


class Classifier:
    def __init__(self, workdir):
        self.served = serving_function(workdir, fold=False)  # (folding saves nothing in JAX itself)
        if self.served.input_name != "images":
            raise UserError(f"{workdir} was trained on sound: classify takes image files; export the run "
                            "(python -m jaxnets.export) and give the file clips, as docs/sound.md shows")
        self._probabilities = jax.jit(lambda images: jax.nn.softmax(self.served.logits(images)))

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.served.class_names

    def __call__(self, images) -> np.ndarray:
        """Class probabilities [N, classes] of uint8 images [N, H, W, C] at the run's evaluation size."""
        expected = self.served.image_shape
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
            raise UserError(
                f"images must be uint8 [N, {', '.join(map(str, expected))}] (the run's evaluation size), got "
                f"{images.dtype} {list(images.shape)}: Classifier.load(paths) reads and resizes image files")
        return np.asarray(self._probabilities(images))

    def load(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """uint8 [len(paths), H, W, C]: the image files as the run's evaluation resized its images."""
        height, width, channels = self.served.image_shape
        images = []
        for path in paths:
            try:
                with Image.open(path) as image:
                    image = image.convert("RGB" if channels == 3 else "L")
                    if self.served.eval_crop == "centre":
                        image = _resize_and_centre_crop(image, height)
                    else:
                        image = image.resize((width, height), Image.Resampling.BILINEAR)
            except (OSError, ValueError) as e:
                raise UserError(f"{path}: not an image Pillow can read ({e})") from None
            images.append(np.asarray(image, np.uint8).reshape(height, width, channels))
        return np.stack(images) if images else np.zeros((0, height, width, channels), np.uint8)

    def classify_files(self, paths: Sequence[str | os.PathLike], top: int = 5) -> list[list[tuple[str, float]]]:
        """For each file, its `top` classes and their probabilities, most probable first."""
        probabilities = self(self.load(paths))
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top]
        return [[(self.class_names[k], float(p[k])) for k in row] for p, row in zip(probabilities, order, strict=True)]


def _resize_and_centre_crop(image: Image.Image, size: int) -> Image.Image:
    scale = round(size / EVAL_CROP_FRACTION) / min(image.size)
    width, height = round(image.width * scale), round(image.height * scale)
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def image_files(paths: Sequence[str]) -> list[str]:
    """The files named, and the image files (.jpg, .jpeg, .png) under the folders named, sorted."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = [os.path.join(d, f) for d, _, names in os.walk(path) for f in names
                     if f.lower().endswith(IMAGE_SUFFIXES)]
            if not found:
                raise UserError(f"{path}: no .jpg, .jpeg or .png files in this folder")
            files += sorted(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxnets.classify", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="image files, or folders of them")
    parser.add_argument("--workdir", required=True, help="the trained run (a workdir or one of its steps)")
    parser.add_argument("--top", type=_positive, default=5, help="how many classes to print per image")
    args = parser.parse_args(argv)
    try:
        files = image_files(args.paths)
        classifier = Classifier(args.workdir)
        results = classifier.classify_files(files, top=args.top)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path, classes in zip(files, results, strict=True):
        print(path + "".join(f"  {name} {p:.3f}" for name, p in classes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
