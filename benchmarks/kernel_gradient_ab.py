"""1x1 convolutions' float32 kernel gradients as oneDNN sgemms over chunks of rows, against oneDNN's convolution kernel,
one beside the other in one process (`onednn.set_chunked_kernel_gradients`).

    python benchmarks/kernel_gradient_ab.py [--parts ops,models] [--models a,b] [--rounds 5] [--json PATH]

ops: the kernel gradient of single 1x1 convolutions of more rows than a matmul takes, from ResNeXt-29, ResNeXt-50 and
MobileNetV2 at cpu.py's sizes. models: each model's training step (cpu.py's sizes; the forward computes no kernel
gradient). Each call follows an untimed call of the same setting; the order flips every round (harness.rounds). Ratio:
median of the per-round convolution / chunked times (> 1: the chunks are faster). Run it with
`ONEDNN_MAX_CPU_ISA=AVX2` as well as without: the default is on with AVX2 only.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
from cpu import model_spec
from harness import environment, results
from harness.batches import pointwise_operands
from harness.rounds import alternate, compared, under_settings
from memory_probe import build_runner

from jaxnets.ops import onednn

# (label, N, H, W, C, O)
OPS = [("ResNeXt-29 stage 1, in", 64, 32, 32, 256, 512), ("ResNeXt-29 stage 1, out", 64, 32, 32, 512, 256),
       ("ResNeXt-29 stage 2, out", 64, 16, 16, 1024, 512), ("ResNeXt-29 stage 3, in", 64, 8, 8, 1024, 2048),
       ("ResNeXt-50 stage 1, 64 px", 32, 16, 16, 256, 128), ("ResNeXt-50 expansion, 64 px", 32, 16, 16, 64, 256),
       ("ResNeXt-50 stage 3, 64 px", 32, 8, 8, 512, 1024), ("MobileNetV2 projection, 64 px", 32, 16, 16, 96, 16)]
MODELS = ("resnext29_8x64d", "resnext50_32x4d", "cifar_resnext50", "mobilenet_v2", "cifar_mobilenet_v2", "enas_macro")


def both_settings(call) -> dict:
    return under_settings(call, onednn.set_chunked_kernel_gradients, {"chunked": True, "convolution": False})


def summary(seconds: dict[str, list[float]]) -> dict:
    return compared(seconds, "chunked", "convolution")


def measure_op(label: str, n: int, h: int, w: int, c: int, o: int, rounds: int) -> dict:
    x, kernel, dy = jax.device_put(pointwise_operands(n, h, w, c, o))
    # The kernel's gradient alone: XLA drops the input gradient's call.
    program = jax.jit(lambda x, kernel, dy: jax.vjp(onednn.conv2d, x, kernel)[1](dy)[1])
    seconds = alternate(both_settings(lambda: jax.block_until_ready(program(x, kernel, dy))), rounds)
    return {"op": label, "shape": [n, h, w, c, o], "rows": n * h * w, **summary(seconds)}


def measure_model(name: str, rounds: int) -> dict:
    spec = dataclasses.asdict(model_spec(name, False))
    runner = build_runner("jaxnets", spec)
    seconds = alternate(both_settings(runner.train), rounds)
    return {"model": name, "size": spec["size"], "batch": spec["batch"], **summary(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="ops,models")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--op-rounds", type=int, default=11)
    parser.add_argument("--json", default=results.default_path("kernel_gradient_ab"))
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not onednn.available():
        parser.error("needs jaxnets' oneDNN extension (Linux x86-64, `pip install -e .`)")
    default = onednn.default_chunked_kernel_gradients()
    ops, models = [], []
    if "ops" in parts:
        for op in OPS:
            ops.append(r := measure_op(*op, rounds=args.op_rounds))
            print(f"{r['op']}: chunked {r['chunked_ms']:.2f} ms, convolution {r['convolution_ms']:.2f} ms, "
                  f"{r['ratio']:.3f}x", flush=True)
    if "models" in parts:
        for name in args.models.split(","):
            models.append(r := measure_model(name, args.rounds))
            print(f"{name} train: chunked {r['chunked_ms']:.1f} ms, convolution {r['convolution_ms']:.1f} ms, "
                  f"{r['ratio']:.3f}x", flush=True)
    onednn.set_chunked_kernel_gradients(default)
    report = {"environment": environment.capture(), "default_chunked": default, "rounds": args.rounds,
              "op_rounds": args.op_rounds, "ops": ops, "models": models}
    body = ["1x1 convolutions' float32 kernel gradients as oneDNN sgemms over chunks of rows against oneDNN's "
            "convolution kernel, the same compiled program, alternately in one process (`python "
            f"benchmarks/kernel_gradient_ab.py`); the default here: {'chunked' if default else 'convolution'}; ratio = "
            "median per-round convolution / chunked time (> 1: the chunks are faster)."]
    if ops:
        body += ["", f"Single kernel gradients, median of {args.op_rounds} rounds.", "",
                 *results.table(["op", "NHWC in", "out channels", "rows", "chunked ms", "convolution ms", "ratio"],
                                [[r["op"], "x".join(map(str, r["shape"][:4])), r["shape"][4], r["rows"],
                                  results.num(r["chunked_ms"], ".2f"), results.num(r["convolution_ms"], ".2f"),
                                  results.num(r["ratio"], ".3f", "x")] for r in ops])]
    if models:
        body += ["", f"Training steps (cpu.py's sizes), median of {args.rounds} rounds.", "",
                 *results.table(["model", "size", "batch", "chunked ms", "convolution ms", "ratio"],
                                [[r["model"], r["size"], r["batch"], results.num(r["chunked_ms"]),
                                  results.num(r["convolution_ms"]), results.num(r["ratio"], ".3f", "x")]
                                 for r in models])]
    print(results.write(args.json, report, "1x1 kernel gradients: chunked sgemms against convolutions", body))


if __name__ == "__main__":
    main()
