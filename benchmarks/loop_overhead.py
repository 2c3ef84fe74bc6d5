"""The training loop's images/s against the bare step's, on the quickstart (what the loop costs).

    python benchmarks/loop_overhead.py [--config configs/quickstart.py] [--epochs 20] [--json PATH]

The loop: `train_and_evaluate` as train.py runs it (input pipeline, prefetch, logging, checkpoints every
`checkpoint_every_steps`, evaluations), its images/s read from the progress records of metrics.jsonl: one per
`log_every_steps` window, counting the windows' training time (the loop leaves evaluations out; compilation
happens before the first window). The bare step: the same trainer's jitted train step on one device-resident
batch, back to back, blocking once at the end of each round. Ratio = median loop window / bare (the target is
>= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from common import load_recipe


def load_config(path: str, epochs: int):
    config = load_recipe(path)
    config.num_epochs = epochs
    return config


def loop_images_per_second(config) -> tuple[float, list[float]]:
    from jaxnets.train import train_and_evaluate

    with tempfile.TemporaryDirectory() as workdir:
        train_and_evaluate(config, workdir)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
    rates = [r["images_per_second"] for r in records if "images_per_second" in r]
    if not rates:
        raise SystemExit(f"--epochs={config.num_epochs} logs no progress window: use more epochs")
    return statistics.median(rates), rates


def bare_step_images_per_second(config, steps: int, rounds: int) -> float:
    from jaxnets import data
    from jaxnets.train import build_trainer

    trainer = build_trainer(config)
    state = trainer.init_state()
    batch = trainer.shard(next(iter(data.train_iterator(config, config.global_batch_size))))
    state, metrics = trainer.train_step(state, batch)  # compiles
    jax.block_until_ready(metrics)
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = trainer.train_step(state, batch)
        jax.block_until_ready(metrics)
        seconds.append((time.perf_counter() - start) / steps)
    return config.global_batch_size / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/quickstart.py")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "loop_overhead.json"))
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # recipes import configs/

    config = load_config(args.config, args.epochs)
    bare = bare_step_images_per_second(load_config(args.config, args.epochs), steps=100, rounds=5)
    loop, windows = loop_images_per_second(config)
    result = {
        "config": args.config, "epochs": args.epochs, "devices": jax.device_count(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "jax": jax.__version__,
        "loop_images_per_second": loop, "loop_windows": windows,
        "bare_step_images_per_second": bare, "ratio_loop_over_bare": loop / bare,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"loop {loop:,.0f} img/s (median of {len(windows)} windows {np.round(windows).tolist()}), "
          f"bare step {bare:,.0f} img/s: ratio {loop / bare:.2f}")


if __name__ == "__main__":
    main()
