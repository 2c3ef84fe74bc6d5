"""Training-step images/s on one GPU: jaxnets in bfloat16 beside torch.compile in bfloat16.

    python benchmarks/gpu.py [--models resnext50_32x4d,mobilenet_v2] [--batches 64,128,256] [--size 224]
                             [--rounds 5] [--steps 5] [--json PATH] [--[no-]torch-compile] [--tiny]

Per model and per batch of the sweep: one training step = train-mode forward, softmax cross-entropy,
backward and an SGD-with-momentum update, BatchNorm statistics updated, in mixed precision on both sides:
float32 parameters, BN statistics and optimizer state, bfloat16 compute.
- jaxnets: `create_model(name, dtype=jnp.bfloat16)` (its parameters stay float32), optax.sgd(0.1,
  momentum=0.9), `jax.jit(step, donate_argnums=0)`, NHWC;
- PyTorch: torchvision's model if torchvision imports, else the jaxnets.reference twin, channels_last
  (module and input), `torch.compile(model, dynamic=False)` under `torch.autocast(dtype=torch.bfloat16)`,
  cross-entropy in float32, torch.optim.SGD(lr=0.1, momentum=0.9), cudnn.benchmark on.
Rounds are interleaved (jaxnets, PyTorch, jaxnets, ...); a round runs --steps steps back to back and
synchronises once, so host dispatch overlaps the GPU as in training. Reported: the median round's
images/s, the best batch of the sweep per framework (a framework's sweep stops at its first
out-of-memory), and ratio = jaxnets images/s / PyTorch images/s at each one's best batch (> 1: jaxnets
is faster). Both frameworks share the GPU: JAX's preallocation is turned off ($XLA_PYTHON_CLIENT_PREALLOCATE
=false unless set), but each keeps its freed memory pooled, so one's pool can make the other run out first.

Writes --json (default benchmarks/results/gpu.json, --tiny: gpu_tiny.json) and the markdown table next to
it (.md). No TensorFlow. --tiny runs the same code on the CPU (16x16 images, batches 2 and 4, one round of one
step) without torch.compile: Inductor compiles C++ for the CPU, minutes for these models.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from common import host_variables, package_version, sgd_train_step

from jaxnets.models import create_model

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MODELS = ("resnext50_32x4d", "mobilenet_v2")
NUM_CLASSES = 1000
FRAMEWORKS = ("jaxnets", "pytorch")


def torch_model(name: str) -> tuple[Callable[[], torch.nn.Module], str]:
    """A builder of torchvision's model when torchvision imports, else of jaxnets.reference's twin; its text."""
    try:
        import torchvision
    except ImportError:
        from jaxnets.reference import torchvision_mobilenetv2, torchvision_resnext

        module = {"resnext50_32x4d": torchvision_resnext, "mobilenet_v2": torchvision_mobilenetv2}[name]
        return (lambda: getattr(module, name)(num_classes=NUM_CLASSES),
                f"{module.__name__}.{name}(num_classes={NUM_CLASSES})")
    return (lambda: getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES),
            f"torchvision.models.{name}(weights=None, num_classes={NUM_CLASSES}) "
            f"(torchvision {torchvision.__version__})")


class JaxRunner:
    def __init__(self, model, variables: dict, images_nchw: np.ndarray, labels: np.ndarray):
        self.x = jax.device_put(images_nchw.transpose(0, 2, 3, 1))
        self.y = jax.device_put(labels.astype(np.int32))
        self.key = jax.random.key(1)  # dropout
        tx = optax.sgd(0.1, momentum=0.9)
        params = jax.device_put(variables["params"])
        self.state = {"params": params, "batch_stats": jax.device_put(variables.get("batch_stats", {})),
                      "opt": tx.init(params)}

        step = sgd_train_step(model, tx)

        start = time.perf_counter()
        self.step = jax.jit(step, donate_argnums=0).lower(self.state, self.x, self.y, self.key).compile()
        self.compile_seconds = time.perf_counter() - start

    def run(self, steps: int) -> None:
        loss = None
        for _ in range(steps):
            self.state, loss = self.step(self.state, self.x, self.y, self.key)
        jax.block_until_ready((self.state, loss))


class TorchRunner:
    def __init__(self, module: torch.nn.Module, images_nchw: np.ndarray, labels: np.ndarray, device: torch.device,
                 compile_model: bool):
        self.device = device
        module = module.to(device=device, memory_format=torch.channels_last).train()
        self.model = torch.compile(module, dynamic=False) if compile_model else module
        self.x = torch.from_numpy(images_nchw).to(device).contiguous(memory_format=torch.channels_last)
        self.y = torch.from_numpy(labels.astype(np.int64)).to(device)
        self.optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
        start = time.perf_counter()
        self.run(1)  # torch.compile traces and compiles forward and backward on the first call
        self.compile_seconds = time.perf_counter() - start if compile_model else None

    def _step(self) -> None:
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
            logits = self.model(self.x)
        loss = F.cross_entropy(logits.float(), self.y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self._step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def is_oom(error: BaseException) -> bool:
    if isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def free_memory(device: torch.device) -> None:
    gc.collect()
    jax.clear_caches()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def jax_peak_gib() -> float | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def measure_batch(name: str, batch: int, size: int, alive: dict, variables: dict, args, device) -> dict:
    rng = np.random.default_rng(batch)
    images = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, batch)
    row: dict = {"batch": batch}
    runners = {}
    for fw in FRAMEWORKS:
        if not alive[fw]:
            row[fw] = {"skipped": "out of memory at a smaller batch"}
            continue
        try:
            if device.type == "cuda" and fw == "pytorch":
                torch.cuda.reset_peak_memory_stats()
            if fw == "jaxnets":
                runner = JaxRunner(create_model(name, num_classes=NUM_CLASSES, dtype=jnp.bfloat16), variables,
                                   images, labels)
            else:
                torch._dynamo.reset()  # a fresh compile per batch, no recompile limits or dynamic shapes
                torch.manual_seed(0)
                runner = TorchRunner(torch_model(name)[0](), images, labels, device, args.torch_compile)
            runner.run(args.warmup)
            runners[fw] = runner
        except Exception as error:  # out of memory is a result; anything else is re-raised
            if not is_oom(error):
                raise
            alive[fw] = False
            row[fw] = {"error": f"out of memory while building: {str(error)[:300]}"}
            free_memory(device)
    times: dict[str, list[float]] = {fw: [] for fw in runners}
    for _ in range(args.rounds):
        for fw, runner in list(runners.items()):
            try:
                start = time.perf_counter()
                runner.run(args.steps)
                times[fw].append((time.perf_counter() - start) / args.steps)
            except Exception as error:
                if not is_oom(error):
                    raise
                alive[fw] = False
                row[fw] = {"error": f"out of memory while timing: {str(error)[:300]}"}
                del runners[fw]
                free_memory(device)
    for fw, runner in runners.items():
        seconds = statistics.median(times[fw])
        row[fw] = {
            "train_images_per_s": batch / seconds,
            "seconds_per_step": seconds,
            "seconds_per_step_all": times[fw],
            "compile_seconds": runner.compile_seconds,
            "peak_gib": (jax_peak_gib() if fw == "jaxnets" else
                         torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None),
        }
    ok = all("train_images_per_s" in row[fw] for fw in FRAMEWORKS)
    row["train_ratio"] = row["jaxnets"]["train_images_per_s"] / row["pytorch"]["train_images_per_s"] if ok else None
    del runners
    free_memory(device)
    return row


def measure_model(name: str, args, device) -> dict:
    model = create_model(name, num_classes=NUM_CLASSES, dtype=jnp.bfloat16)
    variables = host_variables(model, jnp.zeros((1, args.size, args.size, 3)))
    alive = dict.fromkeys(FRAMEWORKS, True)
    sweep = []
    for batch in args.batches:
        if not any(alive.values()):
            break
        sweep.append(measure_batch(name, batch, args.size, alive, variables, args, device))
        r = sweep[-1]
        print(f"{name} batch {batch}: " + ", ".join(
            f"{fw} {r[fw]['train_images_per_s']:.1f} img/s" if "train_images_per_s" in r[fw]
            else f"{fw} {next(iter(r[fw].values()))[:60]}" for fw in FRAMEWORKS), flush=True)
    result = {"model": name, "image_size": args.size, "pytorch_model": torch_model(name)[1],
              "torch_compile": args.torch_compile, "sweep": sweep}
    for fw in FRAMEWORKS:
        done = [r for r in sweep if "train_images_per_s" in r[fw]]
        best = max(done, key=lambda r: r[fw]["train_images_per_s"], default=None)
        result[fw] = None if best is None else {"best_batch": best["batch"], **best[fw]}
    result["train_ratio"] = (result["jaxnets"]["train_images_per_s"] / result["pytorch"]["train_images_per_s"]
                             if result["jaxnets"] and result["pytorch"] else None)
    return result


def _driver() -> str | None:
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def environment(device: torch.device) -> dict:
    jax_device = jax.local_devices()[0]
    cuda = device.type == "cuda"
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "jax_device": f"{jax_device.platform}: {getattr(jax_device, 'device_kind', '')}",
        "nvidia_smi": _driver() if cuda else None,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": package_version("jaxlib"),
        "jax_cuda_plugin": package_version("jax-cuda12-plugin") or package_version("jax-cuda13-plugin"),
        "flax": package_version("flax"),
        "optax": package_version("optax"),
        "jax_backend": jax.default_backend(),
        "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
        "JAXNETS_CONV_LOWERING": os.environ.get("JAXNETS_CONV_LOWERING"),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "torchvision": package_version("torchvision"),
        "triton": package_version("triton"),
        "torch_threads": torch.get_num_threads(),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def to_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"GPU benchmark{' (--tiny, on the CPU)' if report['tiny'] else ''}: train step (forward, cross-entropy, "
        "backward, SGD momentum), bfloat16 compute with float32 parameters, "
        f"{report['image_size']}x{report['image_size']}; median of {report['rounds']} interleaved rounds of "
        f"{report['steps_per_round']} steps; ratio = jaxnets / PyTorch images/s at each one's best batch "
        "(> 1: jaxnets faster).",
        f"{env['device']} ({env['nvidia_smi'] or env['machine']}); jax {env['jax']} ({env['jax_backend']}), "
        f"torch {env['torch']} (CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}), PyTorch side "
        f"{'torch.compile' if report['torch_compile'] else 'eager (no torch.compile)'}, channels_last, autocast.",
        "",
        "| model | jaxnets img/s (batch) | PyTorch img/s (batch) | ratio | jaxnets compile (s) | PyTorch compile (s) "
        "| sweep (batch: jaxnets / PyTorch img/s) |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(value, spec="{:.1f}"):
        return "-" if value is None else spec.format(value)

    for r in report["models"]:
        best = {fw: "-" if r[fw] is None else f"{r[fw]['train_images_per_s']:.1f} ({r[fw]['best_batch']})"
                for fw in FRAMEWORKS}
        sweep = "; ".join(
            f"{s['batch']}: " + " / ".join(cell(s[fw]["train_images_per_s"]) if "train_images_per_s" in s[fw]
                                           else "OOM" if "error" in s[fw] else "-" for fw in FRAMEWORKS)
            for s in r["sweep"])
        compile_s = {fw: cell((r[fw] or {}).get("compile_seconds")) for fw in FRAMEWORKS}
        lines.append(
            f"| {r['model']} | {best['jaxnets']} | {best['pytorch']} | {cell(r['train_ratio'], '{:.2f}x')} "
            f"| {compile_s['jaxnets']} | {compile_s['pytorch']} | {sweep} |"
        )
    lines.append(f"\nPyTorch models: {'; '.join(r['pytorch_model'] for r in report['models'])}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default=None, help="the sweep, ascending (default 64,128,256; --tiny 2,4)")
    parser.add_argument("--size", type=int, default=None, help="image size (default 224; --tiny 16)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --tiny 1)")
    parser.add_argument("--steps", type=int, default=None, help="steps per round (default 5; --tiny 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after compiling (default 3; --tiny 1)")
    parser.add_argument("--torch-compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the PyTorch model (default: on, off with --tiny)")
    parser.add_argument("--json", default=None, help="default benchmarks/results/gpu.json (--tiny: gpu_tiny.json)")
    parser.add_argument("--tiny", action="store_true", help="the same code on the CPU at tiny sizes, for the test")
    args = parser.parse_args()

    models = args.models.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    args.batches = [int(b) for b in (args.batches or ("2,4" if args.tiny else "64,128,256")).split(",")]
    args.size = args.size or (16 if args.tiny else 224)
    args.rounds = args.rounds or (1 if args.tiny else 5)
    args.steps = args.steps or (1 if args.tiny else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.torch_compile = (not args.tiny) if args.torch_compile is None else args.torch_compile
    json_path = args.json or os.path.join(RESULTS, "gpu_tiny.json" if args.tiny else "gpu.json")

    # Before JAX starts its backend: the CPU for --tiny; otherwise no preallocation of 75% of the GPU,
    # which would leave PyTorch too little.
    if args.tiny:
        jax.config.update("jax_platforms", "cpu")
        device = torch.device("cpu")
    else:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        if not torch.cuda.is_available() or jax.default_backend() != "gpu":
            parser.error(f"needs a GPU for both frameworks (torch.cuda.is_available()={torch.cuda.is_available()}, "
                         f"jax backend {jax.default_backend()!r}); --tiny checks the code on the CPU")
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True

    report = {"environment": environment(device), "tiny": args.tiny, "image_size": args.size,
              "batches": args.batches, "rounds": args.rounds, "steps_per_round": args.steps,
              "warmup_steps": args.warmup, "torch_compile": args.torch_compile,
              "precision": "bfloat16 compute, float32 parameters/BN statistics/momentum (jaxnets dtype=bfloat16; "
                           "PyTorch autocast)",
              "ratio": "jaxnets images/s / PyTorch images/s, each at its best batch; > 1: jaxnets faster",
              "models": []}
    for name in models:
        report["models"].append(measure_model(name, args, device))

    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    markdown = to_markdown(report)
    with open(os.path.splitext(json_path)[0] + ".md", "w") as f:
        f.write(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
