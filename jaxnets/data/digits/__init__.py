"""`jaxnets_digits`: the UCI 8x8 handwritten digits as a TFDS dataset, prepared offline from digits.npz.

The data ships inside the package (README.md beside this file: source, licence, how the split was made),
so `tfds.builder("jaxnets_digits").download_and_prepare()` needs no network, and the quickstart reads it
through exactly the pipeline that reads CIFAR and ImageNet. Importing this module registers the builder;
`tfds build --imports jaxnets.data.digits jaxnets_digits` works too.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
from etils import epath

from jaxnets.data.tf_imports import tfds

NPZ = resources.files(__name__) / "digits.npz"


def load_npz() -> dict[str, np.ndarray]:
    """images [1797, 8, 8] uint8 in 0..16, labels [1797] uint8, test_index [450] (the fixed test split)."""
    with resources.as_file(NPZ) as path, np.load(path) as data:
        return {name: data[name] for name in data.files}


def rescale(images_0_16: np.ndarray) -> np.ndarray:
    # 0..16 (on-pixel counts per 4x4 block) -> 0..255 like every other image dataset; distinct values stay distinct.
    return np.round(images_0_16.astype(np.float64) * (255 / 16)).astype(np.uint8)


class JaxnetsDigits(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "UCI 8x8 digits (1,797 images), fixed stratified 1,347 / 450 train / test split."}
    # TFDS 4.9.10 otherwise finds this file through the `importlib_resources` backport, which it only
    # declares for Python < 3.9, so preparing fails with ModuleNotFoundError on newer Pythons.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="UCI ML 'Optical Recognition of Handwritten Digits' (the 1,797-image set shipped by "
            "scikit-learn), 8x8 grey images rescaled from 0..16 to 0..255.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
            citation="E. Alpaydin, C. Kaynak. Optical Recognition of Handwritten Digits. UCI Machine Learning "
            "Repository, 1998.",
            license="CC BY 4.0",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # bundled with the package: nothing to download
        data = load_npz()
        is_test = np.zeros(len(data["labels"]), dtype=bool)
        is_test[data["test_index"]] = True
        return {
            "train": self._generate_examples(data, np.flatnonzero(~is_test)),
            "test": self._generate_examples(data, np.flatnonzero(is_test)),
        }

    def _generate_examples(self, data, indices):
        images = rescale(data["images"])
        for i in indices:  # keyed by the index in the original 1,797
            yield int(i), {"image": images[i][:, :, None], "label": int(data["labels"][i])}
