"""Images/s of the train input pipeline (cached read, shuffle, augment, normalise, batch, to numpy).

    python benchmarks/input_pipeline.py [--batch 128] [--examples 10000] [--batches 300] [--rounds 3]

cifar10: `jaxnets.data.train_iterator` exactly as training calls it (pad-4 random crop, flip, per-channel
standardisation, config.cache on), fed by `tfds.testing.mock_data` with random CIFAR-shaped uint8
examples, since CIFAR itself cannot be downloaded here. The mock's Python generator runs only during the
first epoch, which fills the cache and is the warm-up; after it, the timed part is what a prepared CIFAR
costs after its own first epoch (its PNG decoding also happens before the cache).
digits: the bundled dataset for real (prepared into a temporary data_dir), at --digits-size pixels.

Each round times --batches consecutive batches; the median round is reported. Writes input_pipeline.json and
its markdown (.md) into --out (default benchmarks/results/) and prints the markdown.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import ml_collections
import tensorflow_datasets as tfds
from harness import RESULTS, environment, results
from harness.rounds import interleave, timed

from jaxnets import data


def _config(dataset: str, data_dir: str, image_size: int | None) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(dataset=dataset, data_dir=data_dir, image_size=image_size, augment=True, cache=True, seed=0)
    )


def _measure(iterator, warmup: int, batches: int, rounds: int, batch: int) -> dict:
    def take(n: int):
        def call():
            for _ in range(n):
                next(iterator)

        return call

    warmup_seconds = timed(take(warmup))()
    seconds = interleave({"batches": timed(take(batches))}, rounds)  # one contender: rounds in a row
    rates = [batches * batch / s for s in seconds.values["batches"]]
    return {
        "images_per_second": batches * batch / seconds.median("batches"),
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
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        with tfds.testing.mock_data(num_examples=args.examples):
            iterator = data.train_iterator(_config("cifar10", data_dir, None), args.batch)
            warmup = -(-args.examples // args.batch) + 5  # one full epoch fills the cache, then a few more
            measured = _measure(iterator, warmup, args.batches, args.rounds, args.batch)
        rows.append({"dataset": "cifar10", "source": "tfds.testing.mock_data", "image_size": 32, **measured})

        config = _config("digits", data_dir, args.digits_size)
        data.dataset_info(config)  # prepares the bundled dataset before the clock starts
        measured = _measure(data.train_iterator(config, args.batch), 20, args.batches, args.rounds, args.batch)
        rows.append({"dataset": "digits", "source": "bundled", "image_size": args.digits_size, **measured})

    report = {"environment": environment.capture(), "batch": args.batch, "results": rows}
    body = [f"Train input pipeline, batch {args.batch}, augmentation on; median of {args.rounds} rounds of "
            f"{args.batches} batches.", "",
            *results.table(["dataset", "source", "image size", "images/s"],
                           [[r["dataset"], r["source"], r["image_size"], f"{r['images_per_second']:,.0f}"]
                            for r in rows])]
    print(results.write(os.path.join(args.out, "input_pipeline.json"), report, "Train input pipeline", body))


if __name__ == "__main__":
    main()
