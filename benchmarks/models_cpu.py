"""Forward+backward time per family, jaxnets beside the PyTorch module of the same architecture.

    python benchmarks/models_cpu.py [--batch 32] [--size 64] [--rounds 5] [--families resnext,mobilenet,enas]

Both frameworks run one training step's worth of compute (train-mode forward, cross-entropy, backward;
no optimizer update) on the same inputs, interleaved round by round so that machine noise hits both
alike. Reports medians and the jaxnets / PyTorch ratio (lower is better for jaxnets), and writes
benchmarks/results/models_cpu.{json,md}. Compile time is excluded (reported separately).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from jaxnets.models import create_model, layers


@dataclass(frozen=True)
class Family:
    jax_name: str
    jax_overrides: dict
    build_torch: Callable[[int], torch.nn.Module]


def _families() -> dict[str, Family]:
    from jaxnets.reference import torch_enas, torchvision_mobilenetv2, torchvision_resnext

    return {
        "resnext": Family("resnext50_32x4d", {}, lambda c: torchvision_resnext.resnext50_32x4d(num_classes=c)),
        "mobilenet": Family("mobilenet_v2", {}, lambda c: torchvision_mobilenetv2.mobilenet_v2(num_classes=c)),
        # The released ENAS final child: 24 layers, 96 filters, the published arc, true separable convs.
        "enas": Family("enas_macro", {}, lambda c: torch_enas.ENASMacroChild(num_classes=c)),
    }


def jax_step(family: Family, images: np.ndarray, labels: np.ndarray, num_classes: int):
    model = create_model(family.jax_name, num_classes=num_classes, **family.jax_overrides)
    x, y = jnp.asarray(images.transpose(0, 2, 3, 1)), jnp.asarray(labels)
    variables = jax.jit(model.init)(jax.random.key(0), x)

    @jax.jit
    def step(variables, x, y):
        def loss_fn(params):
            logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                                    rngs={"dropout": jax.random.key(1)})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        return jax.value_and_grad(loss_fn)(variables["params"])

    start = time.perf_counter()
    jax.block_until_ready(step(variables, x, y))
    compile_seconds = time.perf_counter() - start
    return (lambda: jax.block_until_ready(step(variables, x, y))), compile_seconds


def torch_step(family: Family, images: np.ndarray, labels: np.ndarray, num_classes: int):
    module = family.build_torch(num_classes).train()
    x = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)
    module = module.to(memory_format=torch.channels_last)
    y = torch.from_numpy(labels)

    def step():
        module.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(module(x), y)
        loss.backward()
        return loss

    step()  # warm-up (allocations, oneDNN primitive creation)
    return step


def release_memory() -> None:
    """Returns freed heap to the OS, so the two frameworks' peaks do not add up (ENAS at 64x64 needs
    about 20 GB in XLA:CPU and 10 GB in PyTorch; the machine has 24)."""
    gc.collect()
    if platform.system() == "Linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(name: str, family: Family, batch: int, size: int, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    labels = rng.integers(0, 10, batch)
    run_jax, compile_seconds = jax_step(family, images, labels, 10)
    release_memory()
    run_torch = torch_step(family, images, labels, 10)
    release_memory()
    jax_times, torch_times = [], []
    for _ in range(rounds):  # interleaved: A B A B ...
        for run, times in ((run_jax, jax_times), (run_torch, torch_times)):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
            release_memory()
    jax_median, torch_median = statistics.median(jax_times), statistics.median(torch_times)
    return {
        "family": name,
        "jaxnets_model": family.jax_name,
        "jaxnets_seconds": jax_median,
        "pytorch_seconds": torch_median,
        "ratio_jaxnets_over_pytorch": jax_median / torch_median,
        "jaxnets_compile_seconds": compile_seconds,
        "process_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "jaxnets_all": jax_times,
        "pytorch_all": torch_times,
    }


def environment() -> dict:
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "conv_lowering": layers.resolve_lowering("auto"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def to_markdown(results: list[dict], env: dict, batch: int, size: int) -> str:
    lines = [
        f"Forward+backward, batch {batch}, {size}x{size}, float32, train mode, median of interleaved rounds.",
        f"{env['machine']}; Python {env['python']}, jax {env['jax']} ({env['jax_backend']}, conv lowering "
        f"{env['conv_lowering']}), torch {env['torch']} ({env['torch_threads']} threads).",
        "",
        "| family | model | jaxnets (s) | PyTorch (s) | jaxnets / PyTorch | jaxnets compile (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['family']} | {r['jaxnets_model']} | {r['jaxnets_seconds']:.3f} | {r['pytorch_seconds']:.3f} | "
            f"{r['ratio_jaxnets_over_pytorch']:.2f}x | {r['jaxnets_compile_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--families", default="resnext,mobilenet,enas")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()

    families = _families()
    unknown = set(args.families.split(",")) - set(families)
    if unknown:
        parser.error(f"unknown family {', '.join(sorted(unknown))}; choose from {', '.join(families)}")
    env = environment()
    results = []
    for name in args.families.split(","):
        results.append(measure(name, families[name], args.batch, args.size, args.rounds))
        r = results[-1]
        print(f"{name}: jaxnets {r['jaxnets_seconds']:.3f}s  pytorch {r['pytorch_seconds']:.3f}s  "
              f"ratio {r['ratio_jaxnets_over_pytorch']:.2f}x  (compile {r['jaxnets_compile_seconds']:.1f}s)",
              flush=True)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "models_cpu.json"), "w") as f:
        json.dump({"environment": env, "batch": args.batch, "size": args.size, "results": results}, f, indent=2)
    markdown = to_markdown(results, env, args.batch, args.size)
    with open(os.path.join(args.out, "models_cpu.md"), "w") as f:
        f.write(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
