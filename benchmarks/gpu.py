"""Training-step images/s on one GPU: jaxnets in bfloat16 beside torch.compile in bfloat16.

    python benchmarks/gpu.py [--models resnext50_32x4d,mobilenet_v2] [--batches 64,128,256] [--size N]
                             [--rounds 5] [--steps 5] [--json PATH] [--[no-]torch-compile] [--tiny]

Per model, at its registry entry's reference image size (224 for these two) unless --size, and per batch of
the sweep: one training step = train-mode forward, softmax cross-entropy, backward and an SGD-with-momentum
update, BatchNorm statistics updated, in mixed precision on both sides: float32 parameters, BN statistics and
optimizer state, bfloat16 compute (harness/runners.py).
- jaxnets: `create_model(name, dtype=jnp.bfloat16)` (its parameters stay float32), optax.sgd(0.1,
  momentum=0.9), `jax.jit(step, donate_argnums=0)`, NHWC;
- PyTorch: torchvision's model if torchvision imports and has it, else the model's twin (its registry entry's
  `reference.twin`, from tests/torch_twins), channels_last
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
import os

import jax
import jax.numpy as jnp
import torch
from harness import environment, requested_models, results
from harness.batches import random_batch
from harness.rounds import freeze_loaded_objects, interleave, timed
from harness.runners import JaxRunner, host_variables
from harness.torch_runners import TorchRunner, twin

from jaxnets.models import create_model, model_entry

MODELS = ("resnext50_32x4d", "mobilenet_v2")
NUM_CLASSES = 1000
FRAMEWORKS = ("jaxnets", "pytorch")


def torch_model(name: str) -> tuple | None:
    """A builder of torchvision's model when torchvision imports and has it, else of the model's twin (None if it
    has none); its text."""
    try:
        import torchvision  # optional: no CPU wheel on the project's machines, so the twins stand in there
    except ImportError:
        torchvision = None
    if torchvision is None or not hasattr(torchvision.models, name):
        return twin(model_entry(name).reference.twin, NUM_CLASSES)
    return (lambda: getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES),
            f"torchvision.models.{name}(weights=None, num_classes={NUM_CLASSES}) "
            f"(torchvision {torchvision.__version__})")


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


def measure_batch(name: str, batch: int, size: int, alive: dict, variables: dict, args, device) -> dict:
    images, labels = random_batch(batch, size, NUM_CLASSES, seed=batch)
    row: dict = {"batch": batch}
    runners = {}
    for fw in FRAMEWORKS:
        if not alive[fw]:
            row[fw] = {"skipped": "out of memory at a smaller batch"}
            continue
        try:
            if fw == "jaxnets":
                runner = JaxRunner(create_model(name, num_classes=NUM_CLASSES, dtype=jnp.bfloat16), images, labels,
                                   forward=False, variables=variables)
            else:
                torch._dynamo.reset()  # a fresh compile per batch, no recompile limits or dynamic shapes
                torch.manual_seed(0)
                runner = TorchRunner(torch_model(name)[0](), images, labels, device=device.type,
                                     torch_compile=args.torch_compile, autocast=torch.bfloat16)
            runner.train(args.warmup)
            runners[fw] = runner
        except Exception as error:  # out of memory is a result; anything else is re-raised
            if not is_oom(error):
                raise
            alive[fw] = False
            row[fw] = {"error": f"out of memory while building: {str(error)[:300]}"}
            free_memory(device)
    # A round runs --steps steps back to back and synchronises once, so host dispatch overlaps the device.
    times = interleave({fw: timed(lambda r=runner: r.train(args.steps), per=args.steps)
                        for fw, runner in runners.items()}, args.rounds, give_up=is_oom)
    for fw, error in times.errors.items():
        alive[fw] = False
        row[fw] = {"error": f"out of memory while timing: {error}"}
        del runners[fw]
        free_memory(device)
    for fw, runner in runners.items():
        seconds = times.median(fw)
        row[fw] = {
            "train_images_per_s": batch / seconds,
            "seconds_per_step": seconds,
            "seconds_per_step_all": times.values[fw],
            "compile_seconds": runner.compile_seconds,
            "peak_gib": runner.device_peak_gib(),
        }
    ok = all("train_images_per_s" in row[fw] for fw in FRAMEWORKS)
    row["train_ratio"] = row["jaxnets"]["train_images_per_s"] / row["pytorch"]["train_images_per_s"] if ok else None
    del runners
    free_memory(device)
    return row


def measure_model(name: str, args, device) -> dict:
    size = args.size or model_entry(name).reference.image_size
    model = create_model(name, num_classes=NUM_CLASSES, dtype=jnp.bfloat16)
    variables = host_variables(model, jnp.zeros((1, size, size, 3)))
    alive = dict.fromkeys(FRAMEWORKS, True)
    sweep = []
    for batch in args.batches:
        if not any(alive.values()):
            break
        sweep.append(r := measure_batch(name, batch, size, alive, variables, args, device))
        print(f"{name} batch {batch}: " + ", ".join(
            f"{fw} {r[fw]['train_images_per_s']:.1f} img/s" if "train_images_per_s" in r[fw]
            else f"{fw} {next(iter(r[fw].values()))[:60]}" for fw in FRAMEWORKS), flush=True)
    result = {"model": name, "image_size": size, "pytorch_model": torch_model(name)[1],
              "torch_compile": args.torch_compile, "sweep": sweep}
    for fw in FRAMEWORKS:
        done = [r for r in sweep if "train_images_per_s" in r[fw]]
        best = max(done, key=lambda r: r[fw]["train_images_per_s"], default=None)
        result[fw] = None if best is None else {"best_batch": best["batch"], **best[fw]}
    result["train_ratio"] = (result["jaxnets"]["train_images_per_s"] / result["pytorch"]["train_images_per_s"]
                             if result["jaxnets"] and result["pytorch"] else None)
    return result


def device_environment(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def markdown_body(report: dict) -> list[str]:
    env = report["environment"]
    rows = []
    for r in report["models"]:
        best = {fw: "-" if r[fw] is None else f"{r[fw]['train_images_per_s']:.1f} ({r[fw]['best_batch']})"
                for fw in FRAMEWORKS}
        sweep = "; ".join(
            f"{s['batch']}: " + " / ".join(results.num(s[fw]["train_images_per_s"]) if "train_images_per_s" in s[fw]
                                           else "OOM" if "error" in s[fw] else "-" for fw in FRAMEWORKS)
            for s in r["sweep"])
        rows.append([f"{r['model']} ({r['image_size']}x{r['image_size']})", best["jaxnets"], best["pytorch"],
                     results.num(r["train_ratio"], ".2f", "x"),
                     *(results.num((r[fw] or {}).get("compile_seconds")) for fw in FRAMEWORKS), sweep])
    return [
        "Train step (forward, cross-entropy, backward, SGD momentum), bfloat16 compute with float32 parameters; "
        f"median of {report['rounds']} interleaved rounds of {report['steps_per_round']} steps; ratio = jaxnets / "
        "PyTorch images/s at each one's best batch (> 1: jaxnets faster).",
        f"{env['device']}; torch CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}; PyTorch side "
        f"{'torch.compile' if report['torch_compile'] else 'eager (no torch.compile)'}, channels_last, autocast.",
        "",
        *results.table(["model", "jaxnets img/s (batch)", "PyTorch img/s (batch)", "ratio", "jaxnets compile (s)",
                        "PyTorch compile (s)", "sweep (batch: jaxnets / PyTorch img/s)"], rows),
        "",
        f"PyTorch models: {'; '.join(r['pytorch_model'] for r in report['models'])}.",
    ]


def main() -> None:
    freeze_loaded_objects()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated registered models")
    parser.add_argument("--batches", default=None, help="the sweep, ascending (default 64,128,256; --tiny 2,4)")
    parser.add_argument("--size", type=int, default=None,
                        help="image size (default: each model's reference size from the registry; --tiny 16)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --tiny 1)")
    parser.add_argument("--steps", type=int, default=None, help="steps per round (default 5; --tiny 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after compiling (default 3; --tiny 1)")
    parser.add_argument("--torch-compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the PyTorch model (default: on, off with --tiny)")
    parser.add_argument("--json", default=None, help="default benchmarks/results/gpu.json (--tiny: gpu_tiny.json)")
    parser.add_argument("--tiny", action="store_true", help="the same code on the CPU at tiny sizes, for the test")
    args = parser.parse_args()

    models = requested_models(parser, args.models, MODELS)
    no_pytorch = [m for m in models if torch_model(m) is None]
    if no_pytorch:
        parser.error(f"no PyTorch model for {', '.join(no_pytorch)}: neither torchvision nor a twin in its registry "
                     "entry")
    args.batches = [int(b) for b in (args.batches or ("2,4" if args.tiny else "64,128,256")).split(",")]
    args.size = args.size or (16 if args.tiny else None)
    args.rounds = args.rounds or (1 if args.tiny else 5)
    args.steps = args.steps or (1 if args.tiny else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.torch_compile = (not args.tiny) if args.torch_compile is None else args.torch_compile

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

    report = {"environment": environment.capture(**device_environment(device)), "tiny": args.tiny,
              "image_size": args.size, "batches": args.batches, "rounds": args.rounds, "steps_per_round": args.steps,
              "warmup_steps": args.warmup, "torch_compile": args.torch_compile,
              "precision": "bfloat16 compute, float32 parameters/BN statistics/momentum (jaxnets dtype=bfloat16; "
                           "PyTorch autocast)",
              "ratio": "jaxnets images/s / PyTorch images/s, each at its best batch; > 1: jaxnets faster",
              "models": []}
    for name in models:
        report["models"].append(measure_model(name, args, device))

    title = f"GPU benchmark{' (--tiny, on the CPU)' if args.tiny else ''}: jaxnets beside PyTorch, bfloat16"
    print(results.write(args.json or results.default_path("gpu", args.tiny), report, title, markdown_body(report)))


if __name__ == "__main__":
    main()
