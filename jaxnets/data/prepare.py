"""Prepares a dataset into a TFDS data_dir (downloads: run it where there is network).

    python -m jaxnets.data.prepare cifar10 --data_dir DIR
    python -m jaxnets.data.prepare imagenet2012 --data_dir DIR [--manual_dir DIR_WITH_THE_ILSVRC2012_TARS]

The same as `tfds build NAME --data_dir DIR`, whose CLI needs apache-beam installed even for datasets that
do not use it (tensorflow/datasets#5463); this needs only what jaxnets already depends on.
"""

from __future__ import annotations

import argparse

from jaxnets.data import digits as _digits  # noqa: F401  (registers jaxnets_digits)
from jaxnets.data.datasets import DATASETS
from jaxnets.data.tf_imports import tfds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--data_dir", default=None, help="default: TFDS's (~/tensorflow_datasets or $TFDS_DATA_DIR)")
    parser.add_argument("--manual_dir", default=None, help="imagenet2012: default DATA_DIR/downloads/manual")
    args = parser.parse_args(argv)
    builder = tfds.builder(DATASETS[args.dataset].tfds_name, data_dir=args.data_dir, try_gcs=False)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir))
    print(f"{args.dataset} prepared in {builder.data_dir}")


if __name__ == "__main__":
    main()
