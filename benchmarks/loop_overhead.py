"""The training loop's images/s against the bare step's, on the quickstart (what the loop costs).

    python benchmarks/loop_overhead.py [--config configs/quickstart.py] [--epochs N] [--rounds 3] [--json PATH]
        [--checkpoint_every_steps N] [--steps_per_dispatch N] [--log_every_steps N]   (default: the recipe's)
        [--bare_steps 100]

The loop: `train_and_evaluate` as train.py runs it (input pipeline, prefetch, logging, checkpoints every
`checkpoint_every_steps`, evaluations), its images/s read from the progress records of metrics.jsonl: one per
`log_every_steps` window (at least two progress records are needed), counting the windows' training time (the
loop leaves evaluations out; compilation happens before the first window). The bare step: the same trainer's
jitted train step on one device-resident batch, --bare_steps at a time, back to back, blocking once at the end
of each measurement. Each of --rounds rounds measures the bare step just before and just after one run of the
loop (this VM's speed drifts by tens of percent over minutes): its ratio = median of the loop's windows / median
of those bare measurements, and the same for all windows together (their images over their seconds, where a
window with a checkpoint save weighs in fully). The results are the medians of the rounds' ratios (the target is
>= 0.9). Writes --json and the markdown beside it (.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np
from harness import environment, load_recipe, results
from harness.rounds import interleave

from jaxnets import data
from jaxnets.train import build_trainer, train_and_evaluate


def load_config(path: str, epochs: int | None):
    config = load_recipe(path)
    if epochs is not None:
        config.num_epochs = epochs
    return config


def loop_windows(config) -> tuple[list[float], float]:
    """The images/s of each progress window of one run of the loop, and of all of them together (their images
    over their training seconds)."""
    with tempfile.TemporaryDirectory() as workdir:
        train_and_evaluate(config, workdir)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
    progress = [r for r in records if "train_loss" in r]
    windows = [(later["step"] - earlier["step"], later["images_per_second"])
               for earlier, later in itertools.pairwise(progress)]
    if not windows:
        raise SystemExit(f"--epochs={config.num_epochs} logs no progress window: use more epochs")
    images = sum(steps * config.global_batch_size for steps, _ in windows)
    seconds = sum(steps * config.global_batch_size / rate for steps, rate in windows)
    return [rate for _, rate in windows], images / seconds


class BareStep:
    """The trainer's jitted train step on one device-resident batch, compiled once."""

    def __init__(self, config):
        self.trainer = build_trainer(config)
        self.state = self.trainer.init_state()
        self.batch = self.trainer.shard(next(iter(data.train_iterator(config, config.global_batch_size))))
        self.images_per_second(steps=1)  # compiles

    def images_per_second(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.trainer.train_step(self.state, self.batch)
        jax.block_until_ready(metrics)
        return self.trainer.config.global_batch_size * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/quickstart.py")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpoint_every_steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--steps_per_dispatch", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--log_every_steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--bare_steps", type=int, default=100, help="steps of each bare-step measurement")
    parser.add_argument("--json", default=results.default_path("loop_overhead"))
    args = parser.parse_args()

    config = load_config(args.config, args.epochs)
    for field in ("checkpoint_every_steps", "steps_per_dispatch", "log_every_steps"):
        if getattr(args, field) is not None:
            config[field] = getattr(args, field)
    bare_step = BareStep(config)
    measure_bare = lambda: [bare_step.images_per_second(steps=args.bare_steps) for _ in range(3)]
    measured = interleave({"before": measure_bare, "loop": lambda: loop_windows(config), "after": measure_bare},
                          args.rounds).values
    rounds = []
    for before, (windows, overall), after in zip(measured["before"], measured["loop"], measured["after"], strict=True):
        loop, bare = statistics.median(windows), statistics.median(before + after)
        rounds.append({"loop_images_per_second": loop, "loop_windows": windows,
                       "loop_overall_images_per_second": overall, "bare_step_images_per_second": bare,
                       "bare_step_measurements": before + after,
                       "ratio_loop_over_bare": loop / bare, "ratio_overall_over_bare": overall / bare})
        print(f"round {len(rounds)}: loop {loop:,.0f} img/s (median of {np.round(windows).tolist()}; all windows "
              f"{overall:,.0f}), bare step {bare:,.0f} img/s (median of {np.round(before + after).tolist()}): ratio "
              f"{loop / bare:.2f} (all windows {overall / bare:.2f})")
    ratio = statistics.median(r["ratio_loop_over_bare"] for r in rounds)
    overall_ratio = statistics.median(r["ratio_overall_over_bare"] for r in rounds)
    report = {
        "environment": environment.capture(),
        "config": args.config, "epochs": config.num_epochs, "steps_per_dispatch": bare_step.trainer.steps_per_dispatch,
        "checkpoint_every_steps": config.checkpoint_every_steps, "log_every_steps": config.log_every_steps,
        "bare_steps": args.bare_steps, "devices": jax.device_count(),
        "ratio_loop_over_bare": ratio, "ratio_overall_over_bare": overall_ratio, "rounds": rounds,
    }
    body = [
        f"`{args.config}`, {config.num_epochs} epochs, steps_per_dispatch {report['steps_per_dispatch']}, "
        f"checkpoint_every_steps {config.checkpoint_every_steps}, log_every_steps {config.log_every_steps}, "
        f"{report['devices']} device(s), bare step measured {args.bare_steps} steps at a time. Ratio = the loop's "
        "images/s (median of its progress windows) / the bare step's (median of the measurements just before and "
        "after it); the figures are medians of the rounds' ratios.",
        "",
        *results.table(["round", "loop img/s", "all windows img/s", "bare step img/s", "loop / bare",
                        "all windows / bare"],
                       [[i + 1, f"{r['loop_images_per_second']:,.0f}", f"{r['loop_overall_images_per_second']:,.0f}",
                         f"{r['bare_step_images_per_second']:,.0f}", f"{r['ratio_loop_over_bare']:.2f}",
                         f"{r['ratio_overall_over_bare']:.2f}"] for i, r in enumerate(rounds)]),
        "",
        f"loop / bare step: **{ratio:.2f}**, all windows together **{overall_ratio:.2f}** (medians of {len(rounds)} "
        "rounds).",
    ]
    print(results.write(args.json, report, "The training loop against its bare step", body))


if __name__ == "__main__":
    main()
