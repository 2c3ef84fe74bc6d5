"""1x1 convolutions as oneDNN matmuls on their buffers as they lie, against oneDNN convolutions with their kernels
reordered into blocks, one beside the other in one process (`onednn.set_matmul_max_rows`).

    python benchmarks/pointwise_ab.py [--parts ops,models] [--models a,b] [--rounds 5] [--against ROWS] [--json PATH]

ops: single 1x1 convolutions (forward, input gradient, kernel gradient, each alone) from ResNeXt-50, its CIFAR form and
MobileNetV2, from 128 to 100,352 rows (batch x height x width), the same compiled program called with every 1x1
convolution as matmuls, then as convolutions, alternately. Called over and over, a kernel and its reorder stay in the
caches, which flatters the convolutions: in a training step every kernel is read from memory. models: the train
step and the eval forward of each model (cpu.py's sizes; `name@224`: at 224 px, batch 32), the same compiled
programs with the default limit (1x1 convolutions of up to 2048 rows as matmuls where oneDNN runs AVX-512 kernels, 512
on AVX2) and with none, or with `--against ROWS`.
Each call follows an untimed call of the same setting; the order flips every round. Ratio: median of the per-round
convolution / matmul times (> 1: the matmuls are faster; with --against, that limit's / the default's).
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
OPS = [("ResNeXt-50 stage 4, 64 px", 32, 2, 2, 1024, 2048), ("ResNeXt-50 stage 3, 64 px", 32, 4, 4, 512, 1024),
       ("ResNeXt-50 stage 2, 64 px", 32, 8, 8, 256, 512), ("CIFAR ResNeXt-50 stage 3", 64, 8, 8, 512, 1024),
       ("ResNeXt-50 stage 1, 64 px", 32, 16, 16, 256, 256), ("CIFAR ResNeXt-50 stage 2", 64, 16, 16, 512, 512),
       ("MobileNetV2 expansion, 64 px", 32, 32, 32, 16, 96), ("ResNeXt-50 stage 1, 224 px", 32, 56, 56, 64, 256)]
MODELS = ("resnext50_32x4d", "mobilenet_v2", "resnext50_32x4d@224", "cifar_resnext50", "resnext29_8x64d",
          "cifar_mobilenet_v2", "enas_macro")


def with_limits(call, matmul_limit: int, against: int = 0) -> dict:
    """`call` with the matmuls up to `matmul_limit` rows ("matmul") and up to `against` rows ("convolution"; 0: none),
    for harness.rounds.alternate."""
    return under_settings(call, onednn.set_matmul_max_rows, {"matmul": matmul_limit, "convolution": against})


def summary(seconds: dict[str, list[float]]) -> dict:
    return compared(seconds, "matmul", "convolution")


def measure_op(label: str, n: int, h: int, w: int, c: int, o: int, rounds: int) -> list[dict]:
    x, kernel, dy = jax.device_put(pointwise_operands(n, h, w, c, o))

    def gradient(index):  # the input's (0) or the kernel's (1) alone: XLA drops the calls the other needs
        return jax.jit(lambda x, kernel, dy: jax.vjp(onednn.conv2d, x, kernel)[1](dy)[index])

    passes = {"fwd": jax.jit(onednn.conv2d), "dX": gradient(0), "dW": gradient(1)}
    rows = []
    for mode, program in passes.items():
        args = (x, kernel) if mode == "fwd" else (x, kernel, dy)
        call = lambda program=program, args=args: jax.block_until_ready(program(*args))  # noqa: E731
        seconds = alternate(with_limits(call, 2**62), rounds)  # every 1x1 as matmuls, or none
        rows.append({"op": label, "shape": [n, h, w, c, o], "rows": n * h * w, "mode": mode, **summary(seconds)})
    return rows


def measure_model(name: str, rounds: int, default_limit: int, against: int) -> list[dict]:
    name, _, size = name.partition("@")
    spec = dataclasses.asdict(model_spec(name, False))
    if size:
        spec.update(size=int(size), batch=32)
    runner = build_runner("jaxnets", spec)
    rows = []
    for kind in ("train", "forward"):
        call = getattr(runner, kind)
        seconds = alternate(with_limits(call, default_limit, against), rounds)
        rows.append({"model": name, "size": spec["size"], "batch": spec["batch"], "kind": kind, **summary(seconds)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="ops,models")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--op-rounds", type=int, default=11)
    parser.add_argument("--against", type=int, default=0,
                        help="models: the limit (rows) the default is measured against; 0 (default): no matmuls")
    parser.add_argument("--json", default=results.default_path("pointwise_ab"))
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not onednn.available():
        parser.error("needs jaxnets' oneDNN extension (Linux x86-64, `pip install -e .`)")
    default = onednn.default_matmul_max_rows()  # (set back after every A/B, and at the end)
    ops, models = [], []
    if "ops" in parts:
        for op in OPS:
            ops += measure_op(*op, rounds=args.op_rounds)
            for r in ops[-3:]:
                print(f"{r['op']} {r['mode']}: matmul {r['matmul_ms']:.2f} ms, convolution {r['convolution_ms']:.2f} "
                      f"ms, {r['ratio']:.3f}x", flush=True)
    if "models" in parts:
        for name in args.models.split(","):
            models += measure_model(name, args.rounds, default, args.against)
            for r in models[-2:]:
                print(f"{name} {r['kind']}: default limit {r['matmul_ms']:.1f} ms, against "
                      f"{r['convolution_ms']:.1f} ms, {r['ratio']:.3f}x", flush=True)
    onednn.set_matmul_max_rows(default)
    report = {"environment": environment.capture(), "default_matmul_max_rows": default, "against": args.against,
              "rounds": args.rounds, "op_rounds": args.op_rounds, "ops": ops, "models": models}
    body = [
        "1x1 convolutions as oneDNN matmuls on their buffers as they lie against oneDNN convolutions (kernels "
        "reordered into blocks), the same compiled program, alternately in one process (`python "
        "benchmarks/pointwise_ab.py`); float32; ratio = median per-round convolution / matmul time (> 1: the "
        "matmuls are faster).",
    ]
    if ops:
        body += ["", f"Single 1x1 convolutions, every one as matmuls or as convolutions, median of {args.op_rounds} "
                 "rounds (fwd: forward; dX: input gradient; dW: kernel gradient, each alone). Called over and over, "
                 "the kernel and its reorder stay in the caches, which flatters the convolutions.", "",
                 *results.table(["op", "NHWC in", "out channels", "rows", "mode", "matmul ms", "convolution ms",
                                 "ratio"],
                                [[r["op"], "x".join(map(str, r["shape"][:4])), r["shape"][4], r["rows"], r["mode"],
                                  results.num(r["matmul_ms"], ".2f"), results.num(r["convolution_ms"], ".2f"),
                                  results.num(r["ratio"], ".3f", "x")] for r in ops])]
    if models:
        against = f"up to {args.against} rows" if args.against else "none"
        body += ["", f"Whole models, median of {args.rounds} rounds: 1x1 convolutions of up to {default} rows as "
                 f"matmuls (the default) against {against} (train: cpu.py's training step; forward: eval mode); "
                 "ratio > 1: the default is faster.", "",
                 *results.table(["model", "size", "batch", "call", f"up to {default} rows ms", f"{against} ms",
                                 "ratio"],
                                [[r["model"], r["size"], r["batch"], r["kind"], results.num(r["matmul_ms"]),
                                  results.num(r["convolution_ms"]), results.num(r["ratio"], ".3f", "x")]
                                 for r in models])]
    print(results.write(args.json, report, "1x1 convolutions: matmuls against convolutions", body))


if __name__ == "__main__":
    main()
