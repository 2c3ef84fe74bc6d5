"""Images/s of the train input pipeline (cached read, shuffle, augment, normalise, batch, to numpy).

    python benchmarks/input_pipeline.py [--batch 128] [--examples 10000] [--batches 300] [--rounds 3]

cifar10: `jaxnets.data.train_iterator` exactly as training calls it (pad-4 random crop, flip, per-channel
standardisation, config.cache on), fed by `tfds.testing.mock_data` with random CIFAR-shaped uint8
examples, since CIFAR itself cannot be downloaded here. The mock's Python generator runs only during the
first epoch, which fills the cache and is the warm-up; after it, the timed part is what a prepared CIFAR
costs after its own first epoch (its PNG decoding also happens before the cache).
digits: the bundled dataset for real (prepared into a temporary data_dir), at --digits-size pixels.

Each round times --batches consecutive batches; the median round is reported. Writes
benchmarks/results/input_pipeline.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxnets import data


def _config(dataset: str, data_dir: str, image_size: int | None) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(dataset=dataset, data_dir=data_dir, image_size=image_size, augment=True, cache=True, seed=0)
    )


def _measure(iterator, warmup: int, batches: int, rounds: int, batch: int) -> dict:
    start = time.perf_counter()
    for _ in range(warmup):
        next(iterator)
    warmup_seconds = time.perf_counter() - start
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        rates.append(batches * batch / (time.perf_counter() - start))
    return {
        "images_per_second": statistics.median(rates),
        "images_per_second_all": rates,
        "warmup_batches": warmup,
        "warmup_seconds": warmup_seconds,
        "timed_batches_per_round": batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--examples", type=int, default=10_000, help="mocked CIFAR train examples")
    parser.add_argument("--batches", type=int, default=300, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--digits-size", type=int, default=8, help="8: the quickstart's size")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as data_dir:
        with tfds.testing.mock_data(num_examples=args.examples):
            iterator = data.train_iterator(_config("cifar10", data_dir, None), args.batch)
            warmup = -(-args.examples // args.batch) + 5  # one full epoch fills the cache, then a few more
            measured = _measure(iterator, warmup, args.batches, args.rounds, args.batch)
        results.append({"dataset": "cifar10", "source": "tfds.testing.mock_data", "image_size": 32, **measured})

        config = _config("digits", data_dir, args.digits_size)
        data.dataset_info(config)  # prepares the bundled dataset before the clock starts
        measured = _measure(data.train_iterator(config, args.batch), 20, args.batches, args.rounds, args.batch)
        results.append({"dataset": "digits", "source": "bundled", "image_size": args.digits_size, **measured})

    env = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tensorflow_datasets": tfds.__version__,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "input_pipeline.json"), "w") as f:
        json.dump({"environment": env, "batch": args.batch, "results": results}, f, indent=2)
    print(f"Train input pipeline, batch {args.batch}, augmentation on; {env['machine']}, TF {env['tensorflow']}.\n")
    print("| dataset | source | image size | images/s |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['dataset']} | {r['source']} | {r['image_size']} | {r['images_per_second']:,.0f} |")


if __name__ == "__main__":
    main()
