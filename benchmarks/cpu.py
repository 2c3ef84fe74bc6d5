"""Training-step and forward images/s per model on the CPU, jaxnets beside its PyTorch twin.

    python benchmarks/cpu.py [--models a,b] [--rounds 5] [--json PATH] [--parts models,ops,enas_search] [--tiny]

Per model, float32, same inputs on both sides, at the size its registry entry's reference names:
ImageNet models (224) at 64x64 in batches of 32, CIFAR models (32) at 32x32 in batches of 64:
- train step images/s: train-mode forward, softmax cross-entropy, backward and an SGD-with-momentum
  update, BatchNorm statistics updated on both sides (harness/runners.py);
- forward images/s: eval mode (`train=False`; PyTorch `.eval()` under `torch.inference_mode()`);
- jaxnets compile seconds: trace + `lower().compile()` of the train step (and of the forward);
- peak memory of the train step per framework, each in its own child process that loads only that framework
  (memory_probe.py, harness/memory.py), so the two frameworks' peaks never mix.
PyTorch runs the model's twin (`model_entry(name).reference.twin`, from tests/torch_twins) in channels_last
with its default thread count; a model whose entry names no twin gets jaxnets figures only. Each framework runs
in a worker process of its own (harness/workers.py: in one process the two change each other's speed), timed
there call by call; rounds are interleaved (jaxnets train, PyTorch train, jaxnets forward, PyTorch forward,
then the next round), one step per call; medians are reported, ratio = jaxnets images/s / PyTorch images/s
(> 1: jaxnets is faster).

Also an op-level conv table (ms per call, median; ratio = PyTorch ms / jaxnets ms, > 1: jaxnets faster)
through `jaxnets.models.layers.conv2d` (its default lowering) and `torch.nn.functional.conv2d` in
channels_last, again one worker process per framework (each round: a pause for the other worker's OpenMP threads
to stop spinning, one untimed call, then OP_BURST calls in a row), and the ENAS shared-weight search step (arc a traced
argument) beside the fixed child built from the same arc (ratio traced / fixed seconds; target <= 1.5).

Writes --json (default benchmarks/results/cpu.json, --tiny: cpu_tiny.json) and the markdown next to it
(same name, .md), and prints the markdown. Imports no TensorFlow. --tiny runs every code path on tiny
shapes (about half a minute), for the test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from harness import environment, requested_models, results, tiny_enas_child, train_py_environment
from harness.batches import random_batch
from harness.memory import in_child, share_compilations
from harness.rounds import freeze_loaded_objects, interleave, release_memory, timed
from harness.runners import JaxRunner
from harness.torch_runners import twin
from harness.workers import OPENMP_SPIN_SECONDS, serve, workers
from memory_probe import MEMORY_STEPS, build_runner

from jaxnets.models import create_model, layers, model_entry
from jaxnets.models.enas import random_arc

NUM_CLASSES = 10
WARM_UP_CALLS = 2  # per model worker, of its train step and of its forward, before the timed rounds
# Each timed call runs right after an untimed one of the same kind in the same worker, as a step follows a step in
# training. Timed straight after the other framework's call, a step faults its scratch into the pages the other
# process has just returned to the kernel, which this VM zeroes far more slowly (free-page reporting to the
# host, likely): the ENAS child's jaxnets step (3 GB of scratch, 733,000 page faults) took 6.4-6.7 s alone with
# 1.2 s of kernel time, and 11-16 s with 11-16 s of kernel time (half its samples in clear_page_erms) alternating
# with PyTorch's; after one untimed step of its own, 7.2-7.8 s (benchmarks/README.md).
SETTLING = 1
OP_BURST = 5  # single convolutions: each round's time is the median of this many calls in a row
FRAMEWORKS = ("jaxnets", "pytorch")
# The models results/cpu.md reports; --models takes any registered model.
DEFAULT_MODELS = ("resnext50_32x4d", "mobilenet_v2", "cifar_resnext50", "resnext29_8x64d", "cifar_mobilenet_v2",
                  "enas_macro")
# (image size, batch) by the registry entry's reference image size: ImageNet models at 64x64 keep a step
# under a second on 2 cores; --tiny keeps every code path at toy sizes.
SIZES = {224: (64, 32), 32: (32, 64)}
TINY_SIZES = {224: (16, 2), 32: (8, 2)}


# --- models ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:  # what memory_probe.build_runner takes, as a dict (dataclasses.asdict)
    name: str
    size: int
    batch: int
    num_classes: int
    overrides: dict  # of jaxnets' model and of its twin alike
    twin_key: str | None  # the registry's twin (tests/torch_twins' TWINS); None: jaxnets only


def model_spec(name: str, tiny: bool) -> ModelSpec:
    size, batch = (TINY_SIZES if tiny else SIZES)[model_entry(name).reference.image_size]
    overrides = tiny_enas_child() if tiny and name == "enas_macro" else {}
    return ModelSpec(name, size, batch, NUM_CLASSES, overrides, model_entry(name).reference.twin)


def probe_memory(spec: ModelSpec, framework: str, environment: dict | None) -> dict:
    """The train step's peak RSS in a child process that loads `framework` alone (memory_probe.py)."""
    return in_child([str(pathlib.Path(__file__).with_name("memory_probe.py")), framework,
                     json.dumps(dataclasses.asdict(spec))], environment)


def model_worker(name: str, framework: str, tiny: bool) -> None:
    """In a worker process (harness/workers.py): the model's train step and forward for `framework`, warmed up
    (first-call allocations, oneDNN primitives; the first timed rounds of a fresh process ran slower), served
    to the parent as "train" and "forward"."""
    runner = build_runner(framework, dataclasses.asdict(model_spec(name, tiny)))
    for _ in range(1 if tiny else WARM_UP_CALLS):
        runner.train()
        runner.forward()
    info = {"pid": os.getpid(), "compile_seconds": getattr(runner, "compile_seconds", None),
            "forward_compile_seconds": getattr(runner, "forward_compile_seconds", None)}
    serve({"train": runner.train, "forward": runner.forward}, info)


def _framework_summary(framework: str, info: dict, batch: int, train_times: list[float],
                       forward_times: list[float]) -> dict:
    train, forward = statistics.median(train_times), statistics.median(forward_times)
    summary = {
        "train_images_per_s": batch / train,
        "forward_images_per_s": batch / forward,
        "train_seconds": train,
        "forward_seconds": forward,
        "train_seconds_all": train_times,
        "forward_seconds_all": forward_times,
        "worker_pid": info["pid"],
    }
    if framework == "jaxnets":
        summary["compile_seconds"] = info["compile_seconds"]
        summary["compile_measured_in"] = "its worker process"
        summary["forward_compile_seconds"] = info["forward_compile_seconds"]
    return summary


def measure_model(spec: ModelSpec, rounds: int, tiny: bool, environments: dict[str, dict | None]) -> dict:
    frameworks = FRAMEWORKS if spec.twin_key is not None else ("jaxnets",)
    tiny_flag = ["--tiny"] if tiny else []
    # Memory first, in children, while no worker holds a model (the children may need all the RAM).
    memory = {fw: probe_memory(spec, fw, environments[fw]) for fw in frameworks}
    with workers({fw: [os.path.abspath(__file__), "--model-worker", spec.name, fw, *tiny_flag]
                  for fw in frameworks}, environments) as started:
        calls = {f"{fw} {kind}": started[fw].timed(kind, untimed_before=SETTLING)
                 for kind in ("train", "forward") for fw in frameworks}  # jaxnets train, PyTorch train, ...
        times = interleave(calls, rounds)
    row = {
        "model": spec.name,
        "jaxnets_model": spec.name,
        "jaxnets_overrides": spec.overrides,
        "pytorch_model": spec.twin_key and twin(spec.twin_key, spec.num_classes, **spec.overrides)[1],
        "image_size": spec.size,
        "batch": spec.batch,
        "rounds": rounds,
        "processes": "one worker process per framework",
        "untimed_calls_before_each": SETTLING,
    }
    for fw in FRAMEWORKS:
        row[fw] = None
        if fw in frameworks:
            row[fw] = _framework_summary(fw, started[fw].info, spec.batch, times.values[f"{fw} train"],
                                         times.values[f"{fw} forward"])
            row[fw]["memory"] = memory[fw]
    # The probe compiled the train step first, in a fresh process, and the worker loaded it from the
    # compilation cache (see `share_compilations`): its compile time is the probe's.
    if memory["jaxnets"].get("compile_seconds") is not None:
        row["jaxnets"]["compile_seconds_here"] = row["jaxnets"]["compile_seconds"]
        row["jaxnets"]["compile_seconds"] = memory["jaxnets"]["compile_seconds"]
        row["jaxnets"]["compile_measured_in"] = "memory-probe child (first compile)"
    row["train_ratio"] = row["forward_ratio"] = None
    if spec.twin_key is not None:
        row["train_ratio"] = times.speedup("jaxnets train", "pytorch train")  # same batch: images/s ratio
        row["forward_ratio"] = times.speedup("jaxnets forward", "pytorch forward")
    else:
        row["note"] = "its registry entry names no PyTorch twin: jaxnets only"
    return row


# --- conv ops -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvOp:
    name: str
    batch: int
    size: int
    cin: int
    cout: int
    kernel: int
    stride: int
    padding: int
    groups: int
    modes: tuple[str, ...] = ("all",)


def conv_ops(tiny: bool) -> list[ConvOp]:
    if tiny:
        n, s, c = 2, 8, 16
        return [
            ConvOp("grouped 3x3, 4 groups", n, s, c, c, 3, 1, 1, 4),
            ConvOp("depthwise 3x3", n, s, c, c, 3, 1, 1, c),
            ConvOp("dense 3x3", n, s, c, c, 3, 1, 1, 1, ("fwd", "dX", "dW", "all")),
            ConvOp("dense 3x3, stride 2", n, s, c, c, 3, 2, 1, 1),
            ConvOp("1x1", n, s, c, c, 1, 1, 0, 1),
        ]
    return [
        ConvOp("grouped 3x3, 32 groups", 32, 16, 128, 128, 3, 1, 1, 32),  # ResNeXt-50 layer3's 4 ch/group
        ConvOp("depthwise 3x3", 32, 16, 144, 144, 3, 1, 1, 144),  # MobileNetV2's 144-channel blocks
        ConvOp("dense 3x3", 32, 32, 128, 128, 3, 1, 1, 1, ("fwd", "dX", "dW", "all")),
        ConvOp("dense 3x3, stride 2", 32, 32, 128, 128, 3, 2, 1, 1, ("fwd", "dX", "dW", "all")),
        ConvOp("1x1", 32, 16, 256, 256, 1, 1, 0, 1, ("fwd", "dX", "dW", "all")),
    ]


def _jax_conv_fn(op: ConvOp, mode: str):
    def conv(x, k):
        return layers.conv2d(x, k, stride=op.stride, padding=op.padding, groups=op.groups)

    if mode == "fwd":
        return jax.jit(lambda x, k, g: conv(x, k))
    if mode == "dX":
        return jax.jit(lambda x, k, g: jax.vjp(lambda x: conv(x, k), x)[1](g)[0])
    if mode == "dW":
        return jax.jit(lambda x, k, g: jax.vjp(lambda k: conv(x, k), k)[1](g)[0])

    def everything(x, k, g):
        y, vjp = jax.vjp(conv, x, k)
        return (y, *vjp(g))

    return jax.jit(everything)


def _torch_conv_fn(op: ConvOp, mode: str, x, w, g):
    kw = dict(stride=op.stride, padding=op.padding, groups=op.groups)
    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                F.conv2d(x, w, **kw)
        return fwd
    if mode == "dX":  # aten.convolution_backward with only the input gradient, no forward
        return lambda: torch.nn.grad.conv2d_input(x.shape, w, g, **kw)
    if mode == "dW":
        return lambda: torch.nn.grad.conv2d_weight(x, w.shape, g, **kw)
    xr, wr = x.detach().requires_grad_(True), w.detach().requires_grad_(True)

    def everything():  # forward, then both gradients: what a training step asks of a conv
        y = F.conv2d(xr, wr, **kw)
        torch.autograd.grad(y, (xr, wr), g)

    return everything


def _op_arrays(op: ConvOp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The op's input (NHWC), kernel (HWIO) and output gradient, the same draw in every worker."""
    rng = np.random.default_rng(0)
    out_size = (op.size + 2 * op.padding - op.kernel) // op.stride + 1
    x = rng.standard_normal((op.batch, op.size, op.size, op.cin), dtype=np.float32)
    k = rng.standard_normal((op.kernel, op.kernel, op.cin // op.groups, op.cout), dtype=np.float32) * 0.1
    g = rng.standard_normal((op.batch, out_size, out_size, op.cout), dtype=np.float32)
    return x, k, g


def _op_call(framework: str, op: ConvOp, mode: str) -> Callable[[], None]:
    x, k, g = _op_arrays(op)
    if framework == "jaxnets":
        jx, jk, jg = jnp.asarray(x), jnp.asarray(k), jnp.asarray(g)
        compiled = _jax_conv_fn(op, mode).lower(jx, jk, jg).compile()
        return lambda: jax.block_until_ready(compiled(jx, jk, jg))
    # The same arrays, seen by PyTorch as NCHW tensors in channels_last memory (weights too, as
    # `module.to(memory_format=torch.channels_last)` does).
    tx = torch.from_numpy(x).permute(0, 3, 1, 2)
    tw = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1))).contiguous(memory_format=torch.channels_last)
    tg = torch.from_numpy(g).permute(0, 3, 1, 2)
    return _torch_conv_fn(op, mode, tx, tw, tg)


def _op_name(index: int, mode: str) -> str:
    return f"{index} {mode}"


def op_worker(framework: str, tiny: bool) -> None:
    """In a worker process: every conv op and mode of `conv_ops` for `framework`, warmed up, served by name."""
    calls = {_op_name(i, mode): _op_call(framework, op, mode) for i, op in enumerate(conv_ops(tiny))
             for mode in op.modes}
    for call in calls.values():
        call()
    serve(calls, {})


def measure_ops(rounds: int, tiny: bool, environments: dict[str, dict | None]) -> list[dict]:
    arguments = [os.path.abspath(__file__), "--op-worker"]
    rows = []
    with workers({fw: [*arguments, fw, *(["--tiny"] if tiny else [])] for fw in FRAMEWORKS}, environments) as started:
        for i, op in enumerate(conv_ops(tiny)):
            for mode in op.modes:
                name = _op_name(i, mode)
                # Single convolutions take milliseconds, less than the other worker's OpenMP threads may spin
                # on after its call: each round waits for them, then times OP_BURST calls back to back after
                # one of its own, as in a loop of them.
                times = interleave({fw: started[fw].timed(name, untimed_before=SETTLING, repeat=OP_BURST,
                                                          quiet_before=OPENMP_SPIN_SECONDS)
                                    for fw in FRAMEWORKS}, rounds)
                rows.append(row := {
                    "op": op.name,
                    "mode": mode,
                    "input_nhwc": [op.batch, op.size, op.size, op.cin],
                    "kernel_hwio": [op.kernel, op.kernel, op.cin // op.groups, op.cout],
                    "stride": op.stride,
                    "padding": op.padding,
                    "groups": op.groups,
                    "jaxnets_ms": times.median("jaxnets") * 1e3,
                    "pytorch_ms": times.median("pytorch") * 1e3,
                    "ratio": times.speedup("jaxnets", "pytorch"),
                    "rounds": rounds,
                })
                print(f"{op.name} {mode}: jaxnets {row['jaxnets_ms']:.2f} ms, pytorch {row['pytorch_ms']:.2f} ms",
                      flush=True)
    return rows


def measure_enas_search(rounds: int, tiny: bool) -> dict:
    """The shared-weight search network's train step, arc traced, beside the fixed child of that arc.

    Both: the search network's defaults (12 layers, 36 filters, 6 ops, keep_prob 0.9), 32x32, batch 64,
    the same optimizer step as the models. Not the same FLOPs: the fixed child doubles its channels at
    each reduction (36 -> 72 -> 144) while the search network keeps 36, and the search network adds its
    skips and batch-normalises them where the child concatenates them into a 1x1 conv.
    """
    # (--tiny: 2 of the 6 ops, each a branch of the one compiled step: the same code, a third of the compile)
    num_layers, num_filters, num_branches, size, batch = (3, 8, 2, 8, 2) if tiny else (12, 36, 6, 32, 64)
    arc = random_arc(0, num_layers, num_branches)
    arc_text = " ".join(map(str, arc))
    images, labels = random_batch(batch, size, NUM_CLASSES)
    shared = create_model("enas_macro_shared", num_layers=num_layers, num_filters=num_filters,
                          num_branches=num_branches)
    fixed = create_model("enas_macro", arc=arc_text, num_layers=num_layers, num_filters=num_filters,
                         num_branches=shared.num_branches, keep_prob=shared.keep_prob)
    traced = JaxRunner(shared, images, labels, extra=(jnp.asarray(arc, jnp.int32),), forward=False)
    child = JaxRunner(fixed, images, labels, forward=False)
    traced.train()  # warm-up
    child.train()
    times = interleave({"traced": timed(traced.train), "fixed": timed(child.train)}, rounds)
    traced_s, fixed_s = times.median("traced"), times.median("fixed")
    result = {
        "arc": arc_text,
        "num_layers": num_layers,
        "num_filters": num_filters,
        "num_branches": shared.num_branches,
        "image_size": size,
        "batch": batch,
        "rounds": rounds,
        "traced_seconds": traced_s,
        "fixed_seconds": fixed_s,
        "traced_images_per_s": batch / traced_s,
        "fixed_images_per_s": batch / fixed_s,
        "traced_compile_seconds": traced.compile_seconds,
        "fixed_compile_seconds": child.compile_seconds,
        "ratio_traced_over_fixed": traced_s / fixed_s,
        "target_ratio": 1.5,
        "traced_seconds_all": times.values["traced"],
        "fixed_seconds_all": times.values["fixed"],
    }
    del traced, child
    release_memory()
    jax.clear_caches()
    return result


# --- report ---------------------------------------------------------------------------------------------


def _memory_cell(row: dict, fw: str) -> str:
    memory = (row[fw] or {}).get("memory", {})
    return f"{memory['peak_mib']:.0f} (+{memory['step_extra_mib']:.0f})" if "peak_mib" in memory else "-"


def markdown_body(report: dict) -> list[str]:
    settled = any(r.get("untimed_calls_before_each") for r in report["models"])
    lines = [f"Float32, median of {report['rounds']} interleaved rounds, each framework in a worker process of its own "
             "(models and conv ops); ratio > 1 means jaxnets is faster."
             + (" Each timed model call follows an untimed call of the same kind in its worker (cpu.py: SETTLING)."
                if settled else "")]
    tunables = report.get("worker_glibc_tunables") or {}
    if tunables:
        lines[0] += (" Workers' GLIBC_TUNABLES: "
                     + ", ".join(f"{fw} {tunables.get(fw) or 'unset'}" for fw in FRAMEWORKS)
                     + "; LD_PRELOAD: "
                     + ", ".join(f"{fw} {(report.get('worker_ld_preload') or {}).get(fw) or 'unset'}"
                                 for fw in FRAMEWORKS)
                     + " (unless --plain-malloc, jaxnets' as train.py gives its steps: see train.py).")
    if report["models"]:
        rows = []
        for r in report["models"]:
            jx, pt = r["jaxnets"], r["pytorch"] or {}
            rows.append([
                r["model"], r["image_size"], r["batch"],
                results.num(jx["train_images_per_s"]), results.num(pt.get("train_images_per_s")),
                results.num(r["train_ratio"], ".2f", "x"),
                results.num(jx["forward_images_per_s"]), results.num(pt.get("forward_images_per_s")),
                results.num(r["forward_ratio"], ".2f", "x"),
                results.num(jx["compile_seconds"]), _memory_cell(r, "jaxnets"), _memory_cell(r, "pytorch"),
            ])
        lines += [
            "",
            "Train step = forward, cross-entropy, backward, SGD momentum update; forward = eval mode. "
            f"Peak = peak RSS of a child process running only that framework's {MEMORY_STEPS} train steps; "
            "(+x) = above its RSS just before those steps. PyTorch: the model's twin, channels_last.",
            "",
            *results.table(["model", "size", "batch", "train img/s jaxnets", "PyTorch", "ratio", "fwd img/s jaxnets",
                            "PyTorch", "ratio", "compile (s)", "peak MiB jaxnets", "PyTorch"], rows),
        ]
        for r in report["models"]:
            lines.append(f"\n{r['model']}: " + (r.get("note") or f"PyTorch `{r['pytorch_model']}`") + ".")
            for fw in FRAMEWORKS:
                error = ((r[fw] or {}).get("memory") or {}).get("error")
                if error:
                    lines.append(f"\n{r['model']} {fw} memory probe failed: {error[-300:]}")
    if report["ops"]:
        lines += [
            "",
            f"Convolutions, NHWC float32 (PyTorch: channels_last), ms per call, median of {report['op_rounds']} "
            "interleaved rounds (the line above counts the models'); all = forward + dX + dW; ratio = PyTorch ms / "
            f"jaxnets ms. Each round waits {OPENMP_SPIN_SECONDS} s for the other worker's OpenMP threads to stop "
            f"spinning, makes one untimed call, then times {OP_BURST} in a row (their median).",
            "",
            *results.table(
                ["op", "input NHWC", "kernel HWIO", "stride", "groups", "mode", "jaxnets (ms)", "PyTorch (ms)",
                 "ratio"],
                [[o["op"], "x".join(map(str, o["input_nhwc"])), "x".join(map(str, o["kernel_hwio"])), o["stride"],
                  o["groups"], o["mode"], f"{o['jaxnets_ms']:.2f}", f"{o['pytorch_ms']:.2f}", f"{o['ratio']:.2f}x"]
                 for o in report["ops"]]),
        ]
    e = report["enas_search"]
    if e:
        lines += [
            "",
            f"ENAS search network, arc traced, beside the fixed child of the same arc ({e['num_layers']} layers, "
            f"{e['num_filters']} filters, {e['image_size']}x{e['image_size']}, batch {e['batch']}); "
            f"target traced / fixed <= {e['target_ratio']}x. Arc: `{e['arc']}`.",
            "",
            *results.table(["step", "s/step", "img/s", "compile (s)"], [
                ["shared, arc traced", f"{e['traced_seconds']:.3f}", f"{e['traced_images_per_s']:.1f}",
                 f"{e['traced_compile_seconds']:.1f}"],
                ["fixed child", f"{e['fixed_seconds']:.3f}", f"{e['fixed_images_per_s']:.1f}",
                 f"{e['fixed_compile_seconds']:.1f}"],
                ["traced / fixed", f"{e['ratio_traced_over_fixed']:.2f}x", "", ""],
            ]),
        ]
    return lines


def worker_environments(plain_malloc: bool, same_malloc_for_pytorch: bool) -> dict[str, dict | None]:
    """Each framework's worker environment (None: this process's). jaxnets' workers stand in for train.py's
    steps, so they run where train.py does: it restarts itself with glibc's malloc asking for huge pages (train.py,
    harness.train_py_environment). PyTorch's run as a plain PyTorch script does, unless asked otherwise."""
    trainer = None if plain_malloc else train_py_environment()
    return {"jaxnets": trainer, "pytorch": trainer if same_malloc_for_pytorch else None}


def main() -> None:
    freeze_loaded_objects()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None,
                        help=f"comma-separated registered models; default {','.join(DEFAULT_MODELS)} "
                        "(--tiny: mobilenet_v2,enas_macro)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, --tiny 1)")
    parser.add_argument("--op-rounds", type=int, default=None, help="rounds per conv op (default 21, --tiny 1)")
    parser.add_argument("--parts", default="models,ops,enas_search")
    parser.add_argument("--json", default=None, help="default benchmarks/results/cpu.json (--tiny: cpu_tiny.json)")
    parser.add_argument("--tiny", action="store_true", help="every code path on tiny shapes, for the test")
    parser.add_argument("--plain-malloc", action="store_true",
                        help="jaxnets' workers in this process's environment, not in the one train.py runs in")
    parser.add_argument("--same-malloc-for-pytorch", action="store_true",
                        help="PyTorch's workers in the environment jaxnets' get (default: in this process's)")
    parser.add_argument("--model-worker", nargs=2, metavar=("MODEL", "FRAMEWORK"), help=argparse.SUPPRESS)
    parser.add_argument("--op-worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.model_worker:
        model_worker(*args.model_worker, args.tiny)
        return
    if args.op_worker:
        op_worker(args.op_worker, args.tiny)
        return

    models = requested_models(parser, args.models, ["mobilenet_v2", "enas_macro"] if args.tiny else DEFAULT_MODELS)
    odd = [m for m in models if model_entry(m).reference.image_size not in SIZES]
    if odd:
        parser.error(f"no benchmark size for {', '.join(odd)}: its reference image size is not one of {list(SIZES)}")
    parts = set(args.parts.split(","))
    if parts - {"models", "ops", "enas_search"}:
        parser.error("--parts takes models, ops, enas_search")
    rounds = args.rounds or (1 if args.tiny else 5)
    op_rounds = args.op_rounds or (1 if args.tiny else 21)

    env = environment.capture()  # the caller's variables, before share_compilations sets its own
    env["compilation_cache"] = share_compilations()
    environments = worker_environments(args.plain_malloc, args.same_malloc_for_pytorch)
    report = {"environment": env, "tiny": args.tiny, "rounds": rounds,
              "worker_glibc_tunables": {fw: (environments[fw] or os.environ).get("GLIBC_TUNABLES")
                                        for fw in FRAMEWORKS},
              "worker_ld_preload": {fw: (environments[fw] or os.environ).get("LD_PRELOAD") for fw in FRAMEWORKS},
              "op_rounds": op_rounds,
              "op_calls_per_round": OP_BURST, "op_quiet_seconds_before_each_round": OPENMP_SPIN_SECONDS,
              "ratio": "jaxnets images/s / PyTorch images/s (ops: PyTorch ms / jaxnets ms); > 1: jaxnets faster",
              "models": [], "ops": [], "enas_search": None}
    if "models" in parts:
        for name in models:
            report["models"].append(r := measure_model(model_spec(name, args.tiny), rounds, args.tiny, environments))
            print(f"{name} ({r['image_size']}x{r['image_size']}, batch {r['batch']}): train img/s jaxnets "
                  f"{r['jaxnets']['train_images_per_s']:.1f}, ratio {results.num(r['train_ratio'], '.2f', 'x')}; "
                  f"fwd ratio {results.num(r['forward_ratio'], '.2f', 'x')}", flush=True)
    if "ops" in parts:
        report["ops"] = measure_ops(op_rounds, args.tiny, environments)
    if "enas_search" in parts:
        report["enas_search"] = e = measure_enas_search(rounds, args.tiny)
        print(f"enas search: ratio traced / fixed {e['ratio_traced_over_fixed']:.2f}x", flush=True)

    title = f"CPU benchmark{' (--tiny)' if args.tiny else ''}: jaxnets beside PyTorch"
    print(results.write(args.json or results.default_path("cpu", args.tiny), report, title, markdown_body(report)))


if __name__ == "__main__":
    main()
