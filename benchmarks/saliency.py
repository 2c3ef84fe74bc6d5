"""Saliency maps on the CPU: the gradient of each image's top logit with respect to its pixels, jaxnets beside
PyTorch.

    python benchmarks/saliency.py [--models a,b] [--rounds 5] [--batch 16] [--json PATH] [--tiny]

Per model at its reference size (ImageNet models 224x224, CIFAR-sized ones 32x32), float32, eval mode, a batch of
--batch images a call: the sum over the batch of each image's largest logit, differentiated with respect to the
images (the predicted class's saliency map, as in Simonyan et al. 2014). jaxnets: `jax.jit(jax.grad(...))` of
`model.apply(train=False)` with its default CPU convolutions (oneDNN); no parameter gradient is asked for, so none
is computed. PyTorch: the model's twin (tests/torch_twins) in `.eval()`, channels_last, its parameters frozen
(`requires_grad_(False)`, so that autograd computes no weight gradients either), the images' `.grad` by
`backward()`, its default thread count. Each framework runs in a worker process of its own and the rounds
interleave their calls (harness/workers.py); ratio = jaxnets images/s / PyTorch's (> 1: jaxnets faster).

In eval mode jaxnets' CPU convolutions apply their BatchNorm, residual and activation as oneDNN post-ops
(`onednn.conv2d_fused`); their backward reads each activation's mask off the output, so that this gradient is one
backward-data call per convolution (jaxnets/ops/onednn.py, `_fused_backward`).

Writes --json (default benchmarks/results/saliency.json; --tiny: saliency_tiny.json) and the markdown beside it.
--tiny runs every code path on toy shapes, for the test.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import torch
from harness import environment, requested_models, results, tiny_enas_child
from harness.rounds import freeze_loaded_objects, interleave
from harness.runners import host_variables
from harness.torch_runners import twin
from harness.workers import serve, workers

from jaxnets.models import create_model, layers, model_entry

NUM_CLASSES = 10
DEFAULT_MODELS = ("cifar_mobilenet_v2", "enas_macro", "mobilenet_v2", "resnext50_32x4d")
DEFAULT_BATCH = 16


def model_overrides(name: str, tiny: bool) -> dict:
    return tiny_enas_child() if tiny and name == "enas_macro" else {}


def image_size(name: str, tiny: bool) -> int:
    return 8 if tiny else model_entry(name).reference.image_size


def jax_saliency(name: str, overrides: dict, images: np.ndarray):
    model = create_model(name, num_classes=NUM_CLASSES, **overrides)
    variables = jax.device_put(host_variables(model, images[:1]))

    def top_logits(images):
        return jnp.max(model.apply(variables, images, train=False), axis=-1).sum()

    with layers.conv_lowering("auto", jax.devices()[0].platform):
        saliency = jax.jit(jax.grad(top_logits))
        jax.block_until_ready(saliency(images))  # compiled before the clock starts
    return lambda: jax.block_until_ready(saliency(images))


def torch_saliency(name: str, overrides: dict, images_nchw: np.ndarray):
    build = twin(model_entry(name).reference.twin, NUM_CLASSES, **overrides)
    if build is None:
        return None
    module = build[0]().eval().to(memory_format=torch.channels_last).requires_grad_(False)
    given = torch.from_numpy(images_nchw).contiguous(memory_format=torch.channels_last)

    def run():
        images = given.detach().requires_grad_(True)
        module(images).max(dim=1).values.sum().backward()
        return images.grad

    return run


def _images(size: int, batch: int) -> np.ndarray:
    """The same draw in every worker: normalised float32 images, NHWC."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, size, size, 3), dtype=np.float32)


def framework_worker(name: str, framework: str, batch: int, tiny: bool) -> None:
    """In a worker process: `framework`'s saliency of the model's batch, warmed up, served as "saliency"."""
    overrides = model_overrides(name, tiny)
    images = _images(image_size(name, tiny), batch)
    if framework == "jaxnets":
        run = jax_saliency(name, overrides, images)
    else:
        run = torch_saliency(name, overrides, np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    run()
    serve({"saliency": run}, {})


def measure(name: str, rounds: int, batch: int, tiny: bool) -> dict:
    frameworks = ["jaxnets", *(["pytorch"] if model_entry(name).reference.twin is not None else [])]
    arguments = [str(batch), *(["--tiny"] if tiny else [])]
    with workers({framework: [os.path.abspath(__file__), "--worker", name, framework, *arguments]
                  for framework in frameworks}) as started:
        measured = interleave({framework: started[framework].timed("saliency") for framework in frameworks}, rounds)
    row = {"model": name, "image_size": image_size(name, tiny), "batch": batch,
           "overrides": model_overrides(name, tiny), "processes": "one worker process per framework"}
    for framework in frameworks:
        row[framework] = {"images_per_s": batch / measured.median(framework)}
    if "pytorch" in row:
        row["ratio"] = row["jaxnets"]["images_per_s"] / row["pytorch"]["images_per_s"]
    return row


def markdown_body(report: dict) -> list[str]:
    rows = [[f"{r['model']} ({r['image_size']}px)", results.num(r["jaxnets"]["images_per_s"], ".1f"),
             results.num(r.get("pytorch", {}).get("images_per_s"), ".1f"), results.num(r.get("ratio"), ".2f", "x")]
            for r in report["models"]]
    return [f"The gradient of each image's top logit with respect to its pixels, float32, eval mode, "
            f"{report['batch']} images a call, medians of {report['rounds']} interleaved rounds, each framework in "
            "a worker process of its own. Ratio: jaxnets faster when > 1.", "",
            *results.table(["model", "jaxnets img/s", "PyTorch img/s", "ratio"], rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help=f"comma-separated (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; --tiny 1)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="images a call (default %(default)s)")
    parser.add_argument("--json", help="where to write the results (default: benchmarks/results/saliency.json)")
    parser.add_argument("--tiny", action="store_true", help="every code path on toy shapes (for the test)")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "FRAMEWORK", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, framework, batch = args.worker
        framework_worker(name, framework, int(batch), args.tiny)
        return
    models = requested_models(parser, args.models, ["enas_macro"] if args.tiny else DEFAULT_MODELS)
    if args.batch < 1:
        parser.error(f"--batch must be at least 1, not {args.batch}")
    rounds = args.rounds or (1 if args.tiny else 5)
    freeze_loaded_objects()
    report = {"environment": environment.capture(), "tiny": args.tiny, "rounds": rounds, "batch": args.batch,
              "models": []}
    for name in models:
        report["models"].append(row := measure(name, rounds, args.batch, args.tiny))
        print(json.dumps(row), flush=True)
    title = f"Saliency maps on the CPU{' (--tiny)' if args.tiny else ''}: jaxnets beside PyTorch"
    path = pathlib.Path(args.json) if args.json else results.default_path("saliency", args.tiny)
    print(results.write(path, report, title, markdown_body(report)))


if __name__ == "__main__":
    main()
