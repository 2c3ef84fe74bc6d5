"""Inference speed per family on the CPU: jaxnets beside PyTorch, and beside the LiteRT interpreter and ONNX Runtime
running the .tflite and .onnx files jaxnets exports.

    python benchmarks/inference.py [--models a,b] [--rounds 5] [--json PATH] [--tiny]

Per model at its reference size (ImageNet models 224x224, CIFAR-sized ones 32x32), float32, eval mode:
- latency: one image a call, milliseconds (median over rounds);
- throughput: 32 images, images/s (LiteRT's file takes one image a call, as on a phone: 32 calls).
jaxnets: `jax.jit(model.apply(train=False))` with its default CPU convolutions (oneDNN). PyTorch: the model's twin
(tests/torch_twins) in `.eval()`, channels_last, under `torch.inference_mode()`, its default thread count.
LiteRT and ONNX Runtime: the model written by `jaxnets.export.write(..., "tflite")` and `(..., "onnx")` (uint8
images in, the normalisation inside: one cast and one multiply-add more than the others; BatchNorm folded into the
convolutions) in a child process, so that this one imports no TensorFlow, run by `ai_edge_litert`'s Interpreter
(one image a call, as the file is made) and by an onnxruntime CPU session, each with PyTorch's thread count. Same
weights in jaxnets and the files (a fixed draw); the twin keeps its own initialisation (a forward's speed does
not depend on the weights' values).
Each contender runs in a worker process of its own (harness/workers.py: in one process frameworks change each
other's speed); rounds interleave their calls, each after a quiet 0.1 s and an untimed call of its kind (one image:
the median of 7 calls back to back); ratio = jaxnets images/s / the other's (> 1: jaxnets faster).

Writes --json (default benchmarks/results/inference.json; --tiny: inference_tiny.json) and the markdown beside
it. --tiny runs every code path on toy shapes, for the test.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np
import torch
from harness import REPO, environment, requested_models, results, tiny_enas_child
from harness.rounds import freeze_loaded_objects, interleave
from harness.runners import host_variables
from harness.torch_runners import twin
from harness.workers import OPENMP_SPIN_SECONDS, serve, workers

from jaxnets.models import create_model, layers, model_entry

NUM_CLASSES = 10
THROUGHPUT_BATCH = 32
DEFAULT_MODELS = ("resnext50_32x4d", "mobilenet_v2", "enas_macro")
OTHERS = ("pytorch", "litert", "onnxruntime")  # what jaxnets is compared with
LATENCY_REPEAT = 7  # one-image calls timed back to back per round (their median)

# The child that writes the .tflite and .onnx files: the same model and variables (harness.runners.host_variables'
# fixed draw), served as jaxnets.export serves a run (uint8 in, the normalisation inside, BatchNorm folded).
EXPORT_CHILD = """
import json, sys
sys.path.insert(0, "benchmarks")
import jax.numpy as jnp
from harness.runners import host_variables
from jaxnets.export import served_model, write
from jaxnets.models import create_model
name, overrides, size, path = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = create_model(name, num_classes=10, **overrides)
variables = host_variables(model, jnp.zeros((1, size, size, 3)))
served = served_model(model, variables, image_shape=(size, size, 3), mean=(0.45,) * 3, std=(0.225,) * 3,
                      class_names=tuple(map(str, range(10))))
for format in ("tflite", "onnx"):
    write(served, f"{path}.{format}", format)
"""


def model_overrides(name: str, tiny: bool) -> dict:
    if tiny and name == "enas_macro":
        return tiny_enas_child()
    if tiny and name == "mobilenet_v2":
        return {"width_multiplier": 0.25}
    return {}


def jax_forward(name: str, overrides: dict, size: int):
    model = create_model(name, num_classes=NUM_CLASSES, **overrides)
    variables = jax.device_put(host_variables(model, np.zeros((1, size, size, 3), np.float32)))
    with layers.conv_lowering("auto", jax.devices()[0].platform):
        apply = jax.jit(functools.partial(model.apply, train=False))
        for batch in (1, THROUGHPUT_BATCH):  # compiled before the clock starts
            jax.block_until_ready(apply(variables, np.zeros((batch, size, size, 3), np.float32)))

    def run(images):
        jax.block_until_ready(apply(variables, images))

    return run


def torch_forward(name: str, overrides: dict):
    build = twin(model_entry(name).reference.twin, NUM_CLASSES, **overrides)
    if build is None:
        return None
    module = build[0]().eval().to(memory_format=torch.channels_last)

    def run(images_nchw):
        with torch.inference_mode():
            module(torch.from_numpy(images_nchw).contiguous(memory_format=torch.channels_last))

    return run


def export_files(name: str, overrides: dict, size: int, directory: str) -> str:
    """The path (without its suffix) of the .tflite and .onnx files the child writes."""
    path = os.path.join(directory, name)
    child = subprocess.run([sys.executable, "-c", EXPORT_CHILD, name, json.dumps(overrides), str(size), path],
                           cwd=REPO, capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"exporting {name} to TFLite and ONNX failed:\n{child.stderr[-3000:]}")
    return path


def litert_forward(path: str):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=f"{path}.tflite", num_threads=torch.get_num_threads())
    interpreter.allocate_tensors()
    (given,), (output,) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(images_uint8):
        for image in images_uint8:
            interpreter.set_tensor(given["index"], image[None])
            interpreter.invoke()
            interpreter.get_tensor(output["index"])

    return run


def onnxruntime_forward(path: str):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(f"{path}.onnx", options, providers=["CPUExecutionProvider"])

    def run(images_uint8):
        session.run(["logits"], {"images": images_uint8})

    return run


def _inputs(size: int) -> dict[str, dict[int, np.ndarray]]:
    """The same draw in every worker: uint8 pixels (the exported files' input), and the float32 images they make
    after the normalisation, NHWC (jaxnets) and NCHW (PyTorch), per batch size."""
    rng = np.random.default_rng(0)
    pixels = {batch: rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8) for batch in (1, THROUGHPUT_BATCH)}
    nhwc = {batch: ((p / 255.0 - 0.45) / 0.225).astype(np.float32) for batch, p in pixels.items()}
    nchw = {batch: np.ascontiguousarray(x.transpose(0, 3, 1, 2)) for batch, x in nhwc.items()}
    return {"pixels": pixels, "nhwc": nhwc, "nchw": nchw}


def image_size(name: str, tiny: bool) -> int:
    return 8 if tiny else model_entry(name).reference.image_size


def contender_worker(name: str, contender: str, exported: str, tiny: bool) -> None:
    """In a worker process: `contender`'s forward of the model, warmed up, served as "1" and "32" (images a call)."""
    size = image_size(name, tiny)
    overrides = model_overrides(name, tiny)
    inputs = _inputs(size)
    run, images = {
        "jaxnets": lambda: (jax_forward(name, overrides, size), inputs["nhwc"]),
        "pytorch": lambda: (torch_forward(name, overrides), inputs["nchw"]),
        "litert": lambda: (litert_forward(exported), inputs["pixels"]),
        "onnxruntime": lambda: (onnxruntime_forward(exported), inputs["pixels"]),
    }[contender]()
    calls = {str(batch): functools.partial(run, images[batch]) for batch in (1, THROUGHPUT_BATCH)}
    for call in calls.values():
        call()
    serve(calls, {})


def timed_call(worker, batch: int):
    """The worker's call of `batch` images, as one round times it: after a quiet moment (the other workers' OpenMP
    threads stop spinning) and an untimed call of the same kind (the timed one follows its own, as in a serving
    loop); one image a call timed LATENCY_REPEAT times back to back, their median (a single call of a few ms moved
    the latency ratios by 0.12 between runs an hour apart)."""
    return worker.timed(str(batch), untimed_before=1, quiet_before=OPENMP_SPIN_SECONDS,
                        repeat=LATENCY_REPEAT if batch == 1 else 1)


def measure(name: str, rounds: int, tiny: bool, directory: str) -> dict:
    size = image_size(name, tiny)
    overrides = model_overrides(name, tiny)
    exported = export_files(name, overrides, size, directory)
    has_twin = model_entry(name).reference.twin is not None
    contenders = ["jaxnets", *(["pytorch"] if has_twin else []), "litert", "onnxruntime"]
    with workers({contender: [os.path.abspath(__file__), "--worker", name, contender, exported,
                              *(["--tiny"] if tiny else [])] for contender in contenders}) as started:
        calls = {f"{contender} {batch}": (lambda w=started[contender], b=batch: timed_call(w, b)() / b)
                 for contender in contenders for batch in (1, THROUGHPUT_BATCH)}
        measured = interleave(calls, rounds)
    row = {"model": name, "image_size": size, "overrides": overrides, "processes": "one worker process per contender"}
    for contender in contenders:
        row[contender] = {"latency_ms": 1000 * measured.median(f"{contender} 1"),
                          "images_per_s": 1 / measured.median(f"{contender} {THROUGHPUT_BATCH}")}
    for other in OTHERS:
        if other in row:
            row[f"latency_ratio_{other}"] = row[other]["latency_ms"] / row["jaxnets"]["latency_ms"]
            row[f"throughput_ratio_{other}"] = row["jaxnets"]["images_per_s"] / row[other]["images_per_s"]
    return row


def markdown_body(report: dict) -> list[str]:
    names = {"jaxnets": "jaxnets", "pytorch": "PyTorch", "litert": "LiteRT", "onnxruntime": "ONNX Runtime"}
    tables = []
    for key, ratio, unit, what in (("latency_ms", "latency_ratio", "ms", "Latency, one image a call"),
                                   ("images_per_s", "throughput_ratio", "img/s",
                                    f"Throughput, {THROUGHPUT_BATCH} images a call (LiteRT: 32 calls of one)")):
        rows = [[f"{r['model']} ({r['image_size']}px)",
                 *(results.num(r.get(framework, {}).get(key), ".1f") for framework in names),
                 *(results.num(r.get(f"{ratio}_{other}"), ".2f", "x") for other in OTHERS)] for r in report["models"]]
        tables += [f"{what}:", "", *results.table(
            ["model", *(f"{name} {unit}" for name in names.values()),
             *(f"vs {names[other]}" for other in OTHERS)], rows), ""]
    return [f"Float32, eval mode, medians of {report['rounds']} interleaved rounds, each contender in a worker "
            f"process of its own; in each round a contender's call follows {OPENMP_SPIN_SECONDS} s of quiet and an "
            f"untimed call of its kind, and one image a call is the median of {LATENCY_REPEAT} calls back to back. "
            "Ratios: jaxnets faster when > 1.",
            "", *tables[:-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help=f"comma-separated (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; --tiny 1)")
    parser.add_argument("--json", help="where to write the results (default: benchmarks/results/inference.json)")
    parser.add_argument("--tiny", action="store_true", help="every code path on toy shapes (for the test)")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "CONTENDER", "EXPORTED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        contender_worker(*args.worker, args.tiny)
        return
    models = requested_models(parser, args.models, ["enas_macro"] if args.tiny else DEFAULT_MODELS)
    rounds = args.rounds or (1 if args.tiny else 5)
    freeze_loaded_objects()
    report = {"environment": environment.capture(), "tiny": args.tiny, "rounds": rounds,
              "latency_calls_per_round": LATENCY_REPEAT, "quiet_seconds_before_each_call": OPENMP_SPIN_SECONDS,
              "models": []}
    with tempfile.TemporaryDirectory() as directory:
        for name in models:
            report["models"].append(row := measure(name, rounds, args.tiny, directory))
            print(json.dumps(row), flush=True)
    title = f"Inference on the CPU{' (--tiny)' if args.tiny else ''}: jaxnets beside PyTorch, LiteRT and ONNX Runtime"
    path = pathlib.Path(args.json) if args.json else results.default_path("inference", args.tiny)
    print(results.write(path, report, title, markdown_body(report)))


if __name__ == "__main__":
    main()
