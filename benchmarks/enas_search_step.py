"""The ENAS search network's train step as the trainer builds it: trace, lower and compile seconds, XLA's scratch
memory, and seconds per step over several sampled arcs.

    python benchmarks/enas_search_step.py [--rounds 3] [--json PATH]

The search recipe's network (12 layers, 36 filters, 6 ops; `configs/enas_macro_search.py`), 32x32 images in
batches of 64, the arc a traced argument: the step compiles once and serves every arc. SGD with momentum
(harness/runners.py's step); convolutions lowered for the device's platform, as the trainer traces them
(`jaxnets.models.layers.conv_lowering`). Scratch: `compiled.memory_analysis().temp_size_in_bytes` (what XLA
allocates besides the arguments and outputs). Each round runs the step once on each of 4 fixed random arcs;
the median round is reported. Compile figures are one compile per process: run the script several times
(in fresh processes, alternating with whatever it is compared with) to see this machine's spread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
import optax
from harness import environment, results
from harness.batches import LEARNING_RATE, MOMENTUM, random_batch
from harness.runners import host_variables, sgd_train_step

from jaxnets.models import create_model, layers
from jaxnets.models.enas.arc import arc_length

NUM_LAYERS, NUM_FILTERS, NUM_BRANCHES, SIZE, BATCH, ARCS = 12, 36, 6, 32, 64, 4


def random_arcs(count: int) -> list[np.ndarray]:
    """Whole-channel arcs: per layer k an op in [0, 6) and k skip bits."""
    rng = np.random.default_rng(0)
    return [np.concatenate([np.concatenate([[rng.integers(0, NUM_BRANCHES)], rng.integers(0, 2, k)])
                            for k in range(NUM_LAYERS)]).astype(np.int32) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=results.default_path("enas_search_step"))
    args = parser.parse_args()

    model = create_model("enas_macro_shared", num_layers=NUM_LAYERS, num_filters=NUM_FILTERS,
                         num_branches=NUM_BRANCHES)
    images, labels = random_batch(BATCH, SIZE, 10)
    x, y = jax.device_put(images.transpose(0, 2, 3, 1)), jax.device_put(labels.astype(np.int32))
    arcs = [jax.device_put(a) for a in random_arcs(ARCS)]
    assert arcs[0].shape == (arc_length(NUM_LAYERS, NUM_BRANCHES, True),)
    variables = jax.device_put(host_variables(model, x))
    tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
    state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
             "opt": tx.init(variables["params"])}
    key = jax.random.key(1)

    with layers.conv_lowering("auto", jax.devices()[0].platform):
        start = time.perf_counter()
        traced = jax.jit(sgd_train_step(model, tx), donate_argnums=0).trace(state, x, y, key, arcs[0])
        traced_at = time.perf_counter()
        lowered = traced.lower()
        lowered_at = time.perf_counter()
        step = lowered.compile()
        compiled_at = time.perf_counter()
    scratch = step.memory_analysis().temp_size_in_bytes

    state, loss = step(state, x, y, key, arcs[0])  # warm-up
    jax.block_until_ready(loss)
    rounds = []
    for _ in range(args.rounds):
        start_round = time.perf_counter()
        for arc in arcs:
            state, loss = step(state, x, y, key, arc)
        jax.block_until_ready((state, loss))
        rounds.append((time.perf_counter() - start_round) / ARCS)
    seconds = {"trace": traced_at - start, "lower": lowered_at - traced_at, "compile": compiled_at - lowered_at}
    report = {
        "environment": environment.capture(),
        "network": {"num_layers": NUM_LAYERS, "num_filters": NUM_FILTERS, "num_branches": NUM_BRANCHES,
                    "image_size": SIZE, "batch": BATCH},
        "seconds": seconds,
        "trace_lower_compile_seconds": sum(seconds.values()),
        "scratch_mib": scratch / 2**20,
        "step_seconds_rounds": rounds,
        "step_seconds": statistics.median(rounds),
    }
    body = [
        f"The search network's train step ({NUM_LAYERS} layers, {NUM_FILTERS} filters, {NUM_BRANCHES} ops, "
        f"{SIZE}x{SIZE}, batch {BATCH}, arc traced), as the trainer traces it; `python "
        f"benchmarks/enas_search_step.py --rounds {args.rounds}`.",
        "",
        *results.table(["trace s", "lower s", "compile s", "together s", "scratch MiB", "s/step (median)"], [[
            f"{seconds['trace']:.1f}", f"{seconds['lower']:.1f}", f"{seconds['compile']:.1f}",
            f"{sum(seconds.values()):.1f}", f"{scratch / 2**20:.0f}", f"{statistics.median(rounds):.3f}"]]),
    ]
    print(results.write(args.json, report, "The ENAS search step", body))


if __name__ == "__main__":
    main()
