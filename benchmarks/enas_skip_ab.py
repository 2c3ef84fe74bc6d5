"""The ENAS child's eval forward with its skip connections' 1x1 as one convolution of the concatenation (what
`enas.ops.ConcatConvBN` runs in inference up to `INFERENCE_CONCATENATION_BYTES`; here at any batch) against the sum of
per-input 1x1s (what it runs in training and beyond that bound), one program beside the other.

    python benchmarks/enas_skip_ab.py [--batches 1,64] [--rounds 9] [--json PATH]

The released child (24 layers of 96 filters, its published arc) at 32x32, cpu.py's He-normal kernels and running
statistics 1 and 0; both programs compiled in this one process from the same variables and called alternately,
the order flipped every round, each timed call following an untimed one (`harness.rounds.alternate`; a batch of
one: 16 calls in each, timed and untimed).
Reported per batch size: the median ms per call of each, the median of the per-round ratios (sum / concatenation:
> 1 means the concatenation is faster) with their range, and the largest difference of their logits relative to
the largest logit.
"""

from __future__ import annotations

import argparse
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from harness import environment, results
from harness.rounds import alternate, compared
from harness.runners import host_variables

from jaxnets.models import create_model, layers
from jaxnets.models.enas import ops

SIZE = 32


def compiled(model, variables, x, concatenation_bytes: float):
    """The eval forward, traced with ConcatConvBN's bound on its inference concatenation at `concatenation_bytes`
    (-1: never, so that it runs its training path, the sum of per-input 1x1s)."""
    bound = ops.INFERENCE_CONCATENATION_BYTES
    ops.INFERENCE_CONCATENATION_BYTES = concatenation_bytes
    try:
        with layers.conv_lowering("auto", "cpu"):
            return jax.jit(functools.partial(model.apply, train=False)).lower(variables, x).compile()
    finally:
        ops.INFERENCE_CONCATENATION_BYTES = bound


def measure(batch: int, rounds: int) -> dict:
    model = create_model("enas_macro", num_classes=10)
    x = jax.device_put(np.random.default_rng(0).standard_normal((batch, SIZE, SIZE, 3), dtype=np.float32))
    variables = jax.device_put(host_variables(model, x))
    programs = {"concatenation": compiled(model, variables, x, math.inf), "sum": compiled(model, variables, x, -1)}
    logits = {kind: program(variables, x) for kind, program in programs.items()}
    difference = float(jnp.max(jnp.abs(logits["concatenation"] - logits["sum"])) / jnp.max(jnp.abs(logits["sum"])))
    calls = max(1, 16 // batch)

    def call(kind):
        def run():
            for _ in range(calls):
                jax.block_until_ready(programs[kind](variables, x))
        return run

    seconds = alternate({kind: call(kind) for kind in programs}, rounds)
    seconds = {kind: [s / calls for s in values] for kind, values in seconds.items()}
    ratios = [s / c for s, c in zip(seconds["sum"], seconds["concatenation"], strict=True)]
    return {"batch": batch, **compared(seconds, "concatenation", "sum"), "ratio_range": [min(ratios), max(ratios)],
            "logit_difference": difference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,64", help="comma-separated batch sizes (default 1,64)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", default=results.default_path("enas_skip_ab"))
    args = parser.parse_args()
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        rows.append(r := measure(batch, args.rounds))
        print(f"batch {batch}: concatenation {r['concatenation_ms']:.1f} ms, sum {r['sum_ms']:.1f} ms, "
              f"{r['ratio']:.3f}x", flush=True)
    report = {"environment": environment.capture(), "rounds": args.rounds, "batches": rows}
    body = [
        f"The released ENAS child's eval forward at {SIZE}x{SIZE}, float32, median of {args.rounds} alternating "
        "rounds in one process (`python benchmarks/enas_skip_ab.py`): the skip connections' 1x1 as one convolution "
        "of the concatenation, its BN as post-ops, against the sum of per-input 1x1s and the BN after; ratio = "
        "median per-round sum / concatenation (> 1: the concatenation is faster); logits: max |difference| / max "
        "|sum's|.",
        "",
        *results.table(["batch", "concatenation ms", "sum ms", "ratio", "rounds' range", "logits differ by"],
                       [[r["batch"], results.num(r["concatenation_ms"]), results.num(r["sum_ms"]),
                         results.num(r["ratio"], ".3f", "x"),
                         f"{r['ratio_range'][0]:.3f}-{r['ratio_range'][1]:.3f}", f"{r['logit_difference']:.1e}"]
                        for r in rows]),
    ]
    print(results.write(args.json, report, "ENAS skip connections in inference: concatenation against sum", body))


if __name__ == "__main__":
    main()
