"""Training augmentation, chosen piece by piece (`config.augmentation`; `config.augment=False` turns it all off).

    c.augmentation.flip = False              # digits, letters, spectrograms: a mirror image is another class
    c.augmentation.crop = "random_resized"   # "shift", "random_resized" or "none"
    c.augmentation.scale = (0.08, 1.0)       # random_resized: the crop's share of the image's area
    c.augmentation.color_jitter = 0.4        # brightness, contrast and saturation factors in [1 - j, 1 + j]

`flip` and `crop` default (None) to the dataset kind's own:

| dataset | flip | crop |
|---|---|---|
| cifar10, cifar100 | yes | shift: up to 4 px (of 32), zero padding (the CIFAR papers' and torchvision's) |
| digits | no | shift: up to 1 px (of 8) |
| imagenet2012 | yes | random_resized (area `scale`, aspect ratio 3/4 to 4/3; TF's sampler, per photo) |
| folder: | yes | shift: up to 1/8 of the side |

A random_resized crop takes a uniform share of the image's area in `scale` and a log-uniform aspect ratio in
[3/4, 4/3] (clipped to the image), placed uniformly, resized to the run's size; ImageNet's is drawn on the
decoded photo (TF's sampler: up to 10 attempts), the other kinds' on the batch at the run's size. Colour jitter
(off by default) scales brightness, then contrast (around the image's mean grey), then saturation (around each
pixel's grey; colour images only) by factors drawn uniformly in [1 - j, 1 + j], as torchvision's ColorJitter(j,
j, j) in a fixed order. A run's augmentation is a pure function of (config.seed, the example's position).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

CROPS = ("shift", "random_resized", "none")
ASPECT_RATIOS = (3 / 4, 4 / 3)  # of a random_resized crop (torchvision's)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    flip: bool
    crop: str  # one of CROPS
    scale: tuple[float, float]  # area share of a random_resized crop
    color_jitter: float  # 0: none

    def batch_crop(self, crop_per_example: bool) -> str:
        """The crop the per-batch stage draws: "none" where the family draws its crop per example (ImageNet's
        random_resized crop of the decoded photo; its shift stays the batch's), else `crop`."""
        return "none" if crop_per_example and self.crop != "shift" else self.crop

    def batch_draws(self, crop_per_example: bool) -> int:
        """Uniform numbers per example the per-batch stage uses, in its column order: the crop's (shift 2,
        random_resized 4), the flip's 1, the jitter's 3."""
        crop = {"shift": 2, "random_resized": 4, "none": 0}[self.batch_crop(crop_per_example)]
        return crop + int(self.flip) + (3 if self.color_jitter else 0)


def section_defaults() -> dict[str, Any]:
    """The fields of `config.augmentation` and their defaults (None: the dataset kind's)."""
    return {"flip": None, "crop": None, "scale": (0.08, 1.0), "color_jitter": 0.0}


def resolve(section: Any, flip: bool, crop: str) -> Augmentation:
    """`config.augmentation` (a mapping; absent fields take their defaults) with the dataset kind's `flip` and
    `crop` where it says None; ValueError naming the first bad field."""
    given = dict(section or {})
    fields = {**section_defaults(), **{k: v for k, v in given.items() if v is not None}}
    unknown = sorted(set(given) - set(section_defaults()))
    if unknown:
        raise ValueError(f"config.augmentation: unknown field(s) {', '.join(unknown)}; the fields are "
                         f"{', '.join(section_defaults())}")
    chosen = {"flip": flip, "crop": crop, **{k: v for k, v in fields.items() if v is not None}}
    if not isinstance(chosen["flip"], bool):
        raise ValueError(f"config.augmentation.flip: expected True, False or None, got {chosen['flip']!r}")
    if chosen["crop"] not in CROPS:
        raise ValueError(f"config.augmentation.crop: expected one of {', '.join(CROPS)} or None, "
                         f"got {chosen['crop']!r}")
    scale = chosen["scale"]
    if (not isinstance(scale, (tuple, list)) or len(scale) != 2
            or not all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in scale)
            or not 0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"config.augmentation.scale: expected (low, high) with 0 < low <= high <= 1, got {scale!r}")
    jitter = chosen["color_jitter"]
    if isinstance(jitter, bool) or not isinstance(jitter, numbers.Real) or not 0 <= jitter < 1:
        raise ValueError(f"config.augmentation.color_jitter: expected a number in [0, 1), got {jitter!r}")
    return Augmentation(flip=chosen["flip"], crop=chosen["crop"],
                        scale=(float(scale[0]), float(scale[1])), color_jitter=float(jitter))
