"""Eval forward with BatchNorm, residual and activation as the oneDNN convolution's epilogue, against the same
model with them as separate XLA passes (`layers.separate_batch_norm`), one program beside the other.

    python benchmarks/epilogue_ab.py [--models a,b] [--rounds 11] [--json PATH]

Both programs are compiled in this one process from the same variables (cpu.py's He-normal kernels, running
statistics 1 and 0) and called alternately round by round, the order flipped every round; each call follows
an untimed call of the same program. Reported: median ms per call of each, the median of the per-round ratios
(unfused / fused: > 1 means the epilogue is faster), and the largest difference of their logits relative to
the largest logit. Sizes as cpu.py's: ImageNet models at 64x64 in batches of 32, CIFAR models at 32x32 in 64.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics

import jax
import jax.numpy as jnp
from harness import environment, results
from harness.batches import random_batch
from harness.rounds import alternate
from harness.runners import host_variables

from jaxnets.models import create_model, layers, model_entry

MODELS = ("resnext50_32x4d", "mobilenet_v2", "cifar_resnext50", "resnext29_8x64d", "cifar_mobilenet_v2", "resnet50")
SIZES = {224: (64, 32), 32: (32, 64)}  # (image size, batch) by the reference image size, as cpu.py


def measure(name: str, rounds: int) -> dict:
    size, batch = SIZES[model_entry(name).reference.image_size]
    images, _ = random_batch(batch, size, 10)
    x = jax.device_put(images.transpose(0, 2, 3, 1))
    model = create_model(name, num_classes=10)
    variables = jax.device_put(host_variables(model, x))

    def compiled(separate: bool):
        # A function of its own for each: jax.jit's trace cache keys on the function, not on jaxnets' contexts.
        forward = functools.partial(model.apply, train=False)
        separately = layers.separate_batch_norm() if separate else contextlib.nullcontext()
        with layers.conv_lowering("auto", "cpu"), separately:
            return jax.jit(forward).lower(variables, x).compile()

    programs = {"fused": compiled(False), "unfused": compiled(True)}
    calls = {kind: program.as_text().count("jaxnets_onednn_conv_forward_fused") for kind, program in programs.items()}
    if not calls["fused"] or calls["unfused"]:
        raise RuntimeError(f"{name}: expected fused convolutions in the fused program only, got {calls}")
    logits = {kind: program(variables, x) for kind, program in programs.items()}
    difference = float(jnp.max(jnp.abs(logits["fused"] - logits["unfused"])) / jnp.max(jnp.abs(logits["unfused"])))
    def call(kind):
        return lambda: jax.block_until_ready(programs[kind](variables, x))

    seconds = alternate({kind: call(kind) for kind in ("fused", "unfused")}, rounds)
    ratios = [u / f for u, f in zip(seconds["unfused"], seconds["fused"], strict=True)]
    return {"model": name, "size": size, "batch": batch, "seconds": seconds, "ratio": statistics.median(ratios),
            "fused_ms": 1e3 * statistics.median(seconds["fused"]),
            "unfused_ms": 1e3 * statistics.median(seconds["unfused"]), "logit_difference": difference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--json", default=results.default_path("epilogue_ab"))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        rows.append(measure(name, args.rounds))
        r = rows[-1]
        print(f"{name}: fused {r['fused_ms']:.1f} ms, unfused {r['unfused_ms']:.1f} ms, {r['ratio']:.3f}x", flush=True)
    report = {"environment": environment.capture(), "rounds": args.rounds, "models": rows}
    body = [
        f"Eval forward, float32, median of {args.rounds} alternating rounds in one process (`python "
        "benchmarks/epilogue_ab.py`): BN, residual and activation as the oneDNN convolution's epilogue (fused) "
        "against separate XLA passes (`layers.separate_batch_norm`); ratio = median per-round unfused / fused "
        "(> 1: the epilogue is faster); logits: max |fused - unfused| / max |unfused|.",
        "",
        *results.table(["model", "size", "batch", "fused ms", "unfused ms", "ratio", "logits differ by"],
                       [[r["model"], r["size"], r["batch"], results.num(r["fused_ms"]), results.num(r["unfused_ms"]),
                         results.num(r["ratio"], ".3f", "x"), f"{r['logit_difference']:.1e}"] for r in rows]),
    ]
    print(results.write(args.json, report, "Inference epilogue: fused against separate", body))


if __name__ == "__main__":
    main()
