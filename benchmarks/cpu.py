"""Training-step and forward images/s per model on the CPU, jaxnets beside its PyTorch twin.

    python benchmarks/cpu.py [--models a,b] [--rounds 5] [--json PATH] [--parts models,ops,enas_search] [--tiny]

Per model, each at its own image size and batch, float32, same inputs on both sides:
- train step images/s: train-mode forward, softmax cross-entropy, backward and an SGD-with-momentum
  update, BatchNorm statistics updated on both sides. jaxnets: optax.sgd(0.1, momentum=0.9) in
  `jax.jit(step, donate_argnums=0)`; PyTorch: torch.optim.SGD(lr=0.1, momentum=0.9);
- forward images/s: eval mode (`train=False`; PyTorch `.eval()` under `torch.inference_mode()`);
- jaxnets compile seconds: trace + `lower().compile()` of the train step (and of the forward);
- peak memory of the train step per framework, each in its own child process (`--memory-probe`, see
  `memory_probe`), so the two frameworks' peaks never mix.
PyTorch runs the `jaxnets.reference` twin in channels_last (module and input) with its default thread
count. Rounds are interleaved (jaxnets train, PyTorch train, jaxnets forward, PyTorch forward, then the
next round), one step per call; medians are reported, ratio = jaxnets images/s / PyTorch images/s
(> 1: jaxnets is faster). Models without a PyTorch twin in jaxnets.reference get jaxnets figures only.

Also an op-level conv table (ms per call, median; ratio = PyTorch ms / jaxnets ms, > 1: jaxnets faster)
through `jaxnets.models.layers.conv2d` (its default lowering) and `torch.nn.functional.conv2d` in
channels_last, and the ENAS shared-weight search step (arc a traced argument) beside the fixed child
built from the same arc (ratio traced / fixed seconds; target <= 1.5).

Writes --json (default benchmarks/results/cpu.json, --tiny: cpu_tiny.json) and the markdown table next to
it (same name, .md), and prints the table. Imports no TensorFlow. --tiny runs every code path on tiny
shapes (about half a minute), for the test.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import functools
import gc
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from common import host_variables, package_version, sgd_train_step

from jaxnets.models import create_model, layers, list_models
from jaxnets.models.enas import random_arc

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
NUM_CLASSES = 10
MEMORY_STEPS = 3
PROBE_PREFIX = "MEMORY_PROBE "
FRAMEWORKS = ("jaxnets", "pytorch")


# --- models ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    jax_name: str
    size: int
    batch: int
    jax_overrides: dict = field(default_factory=dict)
    torch_builder: Callable[[], torch.nn.Module] | None = None
    torch_text: str | None = None  # how the twin is built, for the JSON
    no_twin: str | None = None  # why there is no PyTorch side


def _tiny_enas_arc() -> str:
    return " ".join(map(str, random_arc(0, 3, 4)))  # 3 layers, the released 4 ops


def _twin(module, builder: str, **kwargs) -> dict:
    """ModelSpec's PyTorch fields for `module.builder(num_classes=10, **kwargs)` (a jaxnets.reference twin)."""
    arguments = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return {"torch_builder": lambda: getattr(module, builder)(num_classes=NUM_CLASSES, **kwargs),
            "torch_text": f"{module.__name__}.{builder}(num_classes={NUM_CLASSES}{arguments})"}


def model_specs(tiny: bool = False) -> dict[str, ModelSpec]:
    from jaxnets.reference import torch_enas, torchvision_mobilenetv2, torchvision_resnext

    imagenet, cifar = ((16, 2), (8, 2)) if tiny else ((64, 32), (32, 64))
    # --tiny keeps every architecture but ENAS's released 24 x 96 child (a minute to compile): 3 layers of 8.
    enas = dict(num_layers=3, num_filters=8, arc=_tiny_enas_arc()) if tiny else {}
    return {
        "resnext50_32x4d": ModelSpec("resnext50_32x4d", *imagenet, **_twin(torchvision_resnext, "resnext50_32x4d")),
        "mobilenet_v2": ModelSpec("mobilenet_v2", *imagenet, **_twin(torchvision_mobilenetv2, "mobilenet_v2")),
        "cifar_resnext50": ModelSpec("cifar_resnext50", *cifar, **_twin(torchvision_resnext, "cifar_resnext50")),
        "resnext29_8x64d": ModelSpec("resnext29_8x64d", *cifar, **_twin(torchvision_resnext, "resnext29_8x64d")),
        "cifar_mobilenet_v2": ModelSpec(
            "cifar_mobilenet_v2", *cifar,
            no_twin="no PyTorch twin in jaxnets.reference: torchvision_mobilenetv2 builds only torchvision's "
            "MobileNetV2 (3x3/2 stem, no conv biases, no expand conv at t=1, 160 stage at stride 2)",
        ),
        "enas_macro": ModelSpec("enas_macro", *cifar, jax_overrides=enas,
                                **_twin(torch_enas, "ENASMacroChild", **enas)),
    }


def batch_data(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.standard_normal((spec.batch, 3, spec.size, spec.size), dtype=np.float32)  # NCHW
    return images, rng.integers(0, NUM_CLASSES, spec.batch)


def release_memory() -> None:
    """Returns freed heap to the OS between calls so neither framework runs on the
    other's freed pages."""
    gc.collect()
    if platform.system() == "Linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# --- the two frameworks' steps ---------------------------------------------------------------------------


class JaxRunner:
    """The jitted train step (state donated) and eval forward of one Flax model, compiled up front.

    `extra` are further positional arguments of `model.apply` after the images (the ENAS search
    network's traced arc); `init` sees only the images.
    """

    def __init__(self, model, images_nchw: np.ndarray, labels: np.ndarray, extra=(), forward: bool = True):
        self.x = jnp.asarray(images_nchw.transpose(0, 2, 3, 1))
        self.y = jnp.asarray(labels, jnp.int32)
        self.extra = tuple(extra)
        self.key = jax.random.key(1)  # dropout
        variables = jax.tree.map(jnp.asarray, host_variables(model, self.x))
        tx = optax.sgd(0.1, momentum=0.9)
        self.state = {
            "params": variables["params"],
            "batch_stats": variables.get("batch_stats", {}),
            "opt": tx.init(variables["params"]),
        }
        step = sgd_train_step(model, tx)

        start = time.perf_counter()
        self.train_step = jax.jit(step, donate_argnums=0).lower(
            self.state, self.x, self.y, self.key, *self.extra).compile()
        self.compile_seconds = time.perf_counter() - start
        self.forward_compile_seconds = None
        if forward:
            start = time.perf_counter()
            self.forward_step = jax.jit(functools.partial(model.apply, train=False)).lower(
                self._variables(), self.x, *self.extra).compile()
            self.forward_compile_seconds = time.perf_counter() - start

    def _variables(self):
        return {"params": self.state["params"], "batch_stats": self.state["batch_stats"]}

    def train(self) -> None:
        self.state, loss = self.train_step(self.state, self.x, self.y, self.key, *self.extra)
        jax.block_until_ready((self.state, loss))

    def forward(self) -> None:
        jax.block_until_ready(self.forward_step(self._variables(), self.x, *self.extra))


class TorchRunner:
    """The same step in PyTorch: channels_last module and input, SGD with momentum, default threads."""

    def __init__(self, module: torch.nn.Module, images_nchw: np.ndarray, labels: np.ndarray):
        self.module = module.train().to(memory_format=torch.channels_last)
        self.x = torch.from_numpy(images_nchw).contiguous(memory_format=torch.channels_last)
        self.y = torch.from_numpy(labels.astype(np.int64))
        self.optimizer = torch.optim.SGD(self.module.parameters(), lr=0.1, momentum=0.9)

    def train(self) -> None:
        loss = F.cross_entropy(self.module(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        # Gradients freed here rather than at the next step's start: between steps both frameworks then
        # hold the same state (parameters, BN statistics, momentum), which the memory probe relies on.
        self.optimizer.zero_grad(set_to_none=True)

    def forward(self) -> None:
        self.module.eval()
        with torch.inference_mode():
            self.module(self.x)
        self.module.train()


def build_runner(framework: str, spec: ModelSpec, images: np.ndarray, labels: np.ndarray, forward: bool = True):
    if framework == "jaxnets":
        model = create_model(spec.jax_name, num_classes=NUM_CLASSES, **spec.jax_overrides)
        return JaxRunner(model, images, labels, forward=forward)
    torch.manual_seed(0)
    return TorchRunner(spec.torch_builder(), images, labels)


def time_call(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    release_memory()
    return seconds


def interleaved(calls: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Each round calls every entry once, in order; returns the seconds of each call."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            times[name].append(time_call(fn))
    return times


# --- peak memory, one child process per (model, framework) ------------------------------------------------


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark (VmHWM) of this process: `echo 5 > /proc/self/clear_refs`."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_probe(model_name: str, framework: str, tiny: bool) -> dict:
    """Peak memory of the train step, in this (child) process, which runs nothing else.

    Builds the step (jaxnets: compiles it) and runs one warm-up step, so that both frameworks hold the
    same state between steps: parameters, BN statistics, SGD momentum (PyTorch creates its momentum
    buffers in its first step) and no gradients. Then frees unused heap, resets the kernel's peak-RSS
    mark, reads the RSS, runs 3 steps and reads the peak RSS again (VmHWM). Reported:
    `step_extra_mib` = peak during the 3 steps - RSS just before them (gradients, activations, scratch);
    `peak_mib` = that peak itself (also the runtime, the code, parameters and optimizer state);
    `setup_peak_mib` = the peak before the reset (building, compiling, the warm-up step).
    The peaks are VmHWM (/proc/self/status), not ru_maxrss: Linux carries the pre-exec address space's
    high-water mark into a spawned child's ru_maxrss, so a child's ru_maxrss starts at its parent's peak
    RSS (measured here: a child of a 500 MiB parent reports 513 MiB, VmHWM 13 MiB). Without /proc the
    peak falls back to ru_maxrss, marked by `peak_reset: false`.
    """
    spec = model_specs(tiny)[model_name]
    images, labels = batch_data(spec)
    runner = build_runner(framework, spec, images, labels, forward=False)
    runner.train()  # warm-up
    release_memory()
    setup_peak_kib = _proc_status_kib("VmHWM")  # building, compiling, the warm-up step
    peak_reset = _reset_peak_rss()
    before_kib = _proc_status_kib("VmRSS")
    for _ in range(MEMORY_STEPS):
        runner.train()
    peak_kib = _proc_status_kib("VmHWM") if peak_reset else None
    if peak_kib is None:  # no /proc: ru_maxrss, setup included (and, see above, maybe the parent's peak)
        peak_reset, peak_kib = False, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    before_kib = before_kib if before_kib is not None else 0
    return {
        "compile_seconds": getattr(runner, "compile_seconds", None),
        "peak_mib": peak_kib / 1024,
        "rss_before_steps_mib": before_kib / 1024,
        "step_extra_mib": (peak_kib - before_kib) / 1024,
        "setup_peak_mib": None if setup_peak_kib is None else setup_peak_kib / 1024,
        "peak_reset": peak_reset,
        "steps": MEMORY_STEPS,
    }


def run_memory_probe(model_name: str, framework: str, tiny: bool) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--memory-probe", model_name, framework]
    if tiny:
        command.append("--tiny")
    result = subprocess.run(command, capture_output=True, text=True)
    for line in result.stdout.splitlines()[::-1]:
        if line.startswith(PROBE_PREFIX):
            return json.loads(line[len(PROBE_PREFIX):])
    return {"error": f"exit status {result.returncode}: {(result.stderr or result.stdout)[-1500:]}"}


def share_compilations() -> str:
    """Lets this process load the train steps its memory probes compiled, instead of compiling each
    model's step twice (a minute for the released ENAS child): a private persistent compilation cache,
    inherited by the children. A caller's own $JAX_COMPILATION_CACHE_DIR is used as it is; compile
    times may then be loads of earlier runs' entries."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return "caller's $JAX_COMPILATION_CACHE_DIR (compile times may be cache loads)"
    path = tempfile.mkdtemp(prefix="jaxnets-benchmark-compilations-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path  # for the children
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return "private to this run: the memory probes compile each train step first, this process loads it"


# --- measurements ---------------------------------------------------------------------------------------


def _framework_summary(runner, batch: int, train_times: list[float], forward_times: list[float]) -> dict:
    train, forward = statistics.median(train_times), statistics.median(forward_times)
    summary = {
        "train_images_per_s": batch / train,
        "forward_images_per_s": batch / forward,
        "train_seconds": train,
        "forward_seconds": forward,
        "train_seconds_all": train_times,
        "forward_seconds_all": forward_times,
    }
    if isinstance(runner, JaxRunner):
        summary["compile_seconds"] = runner.compile_seconds
        summary["compile_measured_in"] = "this process"
        summary["forward_compile_seconds"] = runner.forward_compile_seconds
    return summary


def measure_model(name: str, spec: ModelSpec, rounds: int, tiny: bool) -> dict:
    frameworks = FRAMEWORKS if spec.torch_builder is not None else ("jaxnets",)
    # Memory first, in children, while this process holds no model (the children may need all the RAM).
    memory = {fw: run_memory_probe(name, fw, tiny) for fw in frameworks}
    images, labels = batch_data(spec)
    runners = {}
    for fw in frameworks:
        runners[fw] = build_runner(fw, spec, images, labels)
        runners[fw].train()  # warm-up: first-call allocations, oneDNN primitive creation
        runners[fw].forward()
        release_memory()
    calls = {f"{fw} train": runners[fw].train for fw in frameworks}  # jaxnets, PyTorch, ...
    calls.update({f"{fw} forward": runners[fw].forward for fw in frameworks})
    times = interleaved(calls, rounds)
    row = {
        "model": name,
        "jaxnets_model": spec.jax_name,
        "jaxnets_overrides": spec.jax_overrides,
        "pytorch_model": spec.torch_text,
        "image_size": spec.size,
        "batch": spec.batch,
        "rounds": rounds,
    }
    for fw in FRAMEWORKS:
        if fw in frameworks:
            row[fw] = _framework_summary(runners[fw], spec.batch, times[f"{fw} train"], times[f"{fw} forward"])
            row[fw]["memory"] = memory[fw]
        else:
            row[fw] = None
    # The probe compiled the train step first, in a fresh process, and this process loaded it from the
    # compilation cache (see `share_compilations`): its compile time is the probe's.
    if memory["jaxnets"].get("compile_seconds") is not None:
        row["jaxnets"]["compile_seconds_here"] = row["jaxnets"]["compile_seconds"]
        row["jaxnets"]["compile_seconds"] = memory["jaxnets"]["compile_seconds"]
        row["jaxnets"]["compile_measured_in"] = "memory-probe child (first compile)"
    if spec.torch_builder is not None:
        row["train_ratio"] = row["jaxnets"]["train_images_per_s"] / row["pytorch"]["train_images_per_s"]
        row["forward_ratio"] = row["jaxnets"]["forward_images_per_s"] / row["pytorch"]["forward_images_per_s"]
    else:
        row["train_ratio"] = row["forward_ratio"] = None
        row["note"] = spec.no_twin
    del runners, calls
    release_memory()
    jax.clear_caches()
    return row


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
        ConvOp("dense 3x3, stride 2", 32, 32, 128, 128, 3, 2, 1, 1),
        ConvOp("1x1", 32, 16, 256, 256, 1, 1, 0, 1),
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


def measure_op(op: ConvOp, mode: str, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    out_size = (op.size + 2 * op.padding - op.kernel) // op.stride + 1
    x = rng.standard_normal((op.batch, op.size, op.size, op.cin), dtype=np.float32)  # NHWC
    k = rng.standard_normal((op.kernel, op.kernel, op.cin // op.groups, op.cout), dtype=np.float32) * 0.1  # HWIO
    g = rng.standard_normal((op.batch, out_size, out_size, op.cout), dtype=np.float32)

    jx, jk, jg = jnp.asarray(x), jnp.asarray(k), jnp.asarray(g)
    jax_fn = _jax_conv_fn(op, mode).lower(jx, jk, jg).compile()
    run_jax = lambda: jax.block_until_ready(jax_fn(jx, jk, jg))
    # The same arrays, seen by PyTorch as NCHW tensors in channels_last memory (weights too, as
    # `module.to(memory_format=torch.channels_last)` does).
    tx = torch.from_numpy(x).permute(0, 3, 1, 2)
    tw = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1))).contiguous(memory_format=torch.channels_last)
    tg = torch.from_numpy(g).permute(0, 3, 1, 2)
    run_torch = _torch_conv_fn(op, mode, tx, tw, tg)
    run_jax()  # warm-up
    run_torch()
    times = interleaved({"jaxnets": run_jax, "pytorch": run_torch}, rounds)
    jax_ms, torch_ms = statistics.median(times["jaxnets"]) * 1e3, statistics.median(times["pytorch"]) * 1e3
    return {
        "op": op.name,
        "mode": mode,
        "input_nhwc": [op.batch, op.size, op.size, op.cin],
        "kernel_hwio": list(k.shape),
        "stride": op.stride,
        "padding": op.padding,
        "groups": op.groups,
        "jaxnets_ms": jax_ms,
        "pytorch_ms": torch_ms,
        "ratio": torch_ms / jax_ms,
        "rounds": rounds,
    }


def measure_enas_search(rounds: int, tiny: bool) -> dict:
    """The shared-weight search network's train step, arc traced, beside the fixed child of that arc.

    Both: the search network's defaults (12 layers, 36 filters, 6 ops, keep_prob 0.9), 32x32, batch 64,
    the same optimizer step as the models. Not the same FLOPs: the fixed child doubles its channels at
    each reduction (36 -> 72 -> 144) while the search network keeps 36, and the search network adds its
    skips and batch-normalises them where the child concatenates them into a 1x1 conv.
    """
    num_layers, num_filters, size, batch = (3, 8, 8, 2) if tiny else (12, 36, 32, 64)
    arc = random_arc(0, num_layers, 6)
    arc_text = " ".join(map(str, arc))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, batch)
    shared = create_model("enas_macro_shared", num_layers=num_layers, num_filters=num_filters)
    fixed = create_model("enas_macro", arc=arc_text, num_layers=num_layers, num_filters=num_filters,
                         num_branches=shared.num_branches, keep_prob=shared.keep_prob)
    traced = JaxRunner(shared, images, labels, extra=(jnp.asarray(arc, jnp.int32),), forward=False)
    child = JaxRunner(fixed, images, labels, forward=False)
    traced.train()  # warm-up
    child.train()
    times = interleaved({"traced": traced.train, "fixed": child.train}, rounds)
    traced_s, fixed_s = statistics.median(times["traced"]), statistics.median(times["fixed"])
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
        "traced_seconds_all": times["traced"],
        "fixed_seconds_all": times["fixed"],
    }
    del traced, child
    release_memory()
    jax.clear_caches()
    return result


# --- report ---------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=os.path.dirname(RESULTS), capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def environment() -> dict:
    memory = _memory_gib()
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "machine": f"{_cpu_model()} ({platform.machine()}), {os.cpu_count()} cores"
        + (f", {memory:.0f} GiB RAM" if memory else ""),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": package_version("jaxlib"),
        "flax": package_version("flax"),
        "optax": package_version("optax"),
        "numpy": np.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": len(jax.devices()),
        "JAXNETS_CONV_LOWERING": os.environ.get("JAXNETS_CONV_LOWERING"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
        # Set, compile times may be cache loads (a memory probe's child compiles a model's step first).
        "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_mkldnn": torch.backends.mkldnn.is_available(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def _num(value, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:{spec}}{suffix}"


def _get(row: dict, fw: str, *keys):
    value = row.get(fw)
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def to_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"CPU benchmark{' (--tiny)' if report['tiny'] else ''}: float32, median of {report['rounds']} interleaved "
        "rounds; ratio > 1 means jaxnets is faster.",
        f"{env['machine']}; Python {env['python']}, jax {env['jax']} ({env['jax_backend']}, "
        f"$JAXNETS_CONV_LOWERING={env['JAXNETS_CONV_LOWERING']}), torch {env['torch']} "
        f"({env['torch_threads']} threads, channels_last); commit {str(env['git_commit'])[:12]}"
        f"{' (dirty)' if env['git_dirty'] else ''}; load average at start {env['load_average_at_start']}.",
    ]
    if report.get("models"):
        lines += [
            "",
            "Train step = forward, cross-entropy, backward, SGD momentum update; forward = eval mode. "
            "Peak = peak RSS of a child process running only that framework's 3 train steps; "
            "(+x) = above its RSS just before those steps.",
            "",
            "| model | size | batch | train img/s jaxnets | PyTorch | ratio | fwd img/s jaxnets | PyTorch | ratio "
            "| compile (s) | peak MiB jaxnets | PyTorch |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["models"]:
            mem = {
                fw: "-" if _get(r, fw, "memory", "peak_mib") is None
                else f"{_get(r, fw, 'memory', 'peak_mib'):.0f} (+{_get(r, fw, 'memory', 'step_extra_mib'):.0f})"
                for fw in FRAMEWORKS
            }
            lines.append(
                f"| {r['model']} | {r['image_size']} | {r['batch']} "
                f"| {_num(_get(r, 'jaxnets', 'train_images_per_s'), '.1f')} "
                f"| {_num(_get(r, 'pytorch', 'train_images_per_s'), '.1f')} | {_num(r['train_ratio'], '.2f', 'x')} "
                f"| {_num(_get(r, 'jaxnets', 'forward_images_per_s'), '.1f')} "
                f"| {_num(_get(r, 'pytorch', 'forward_images_per_s'), '.1f')} | {_num(r['forward_ratio'], '.2f', 'x')} "
                f"| {_num(_get(r, 'jaxnets', 'compile_seconds'), '.1f')} | {mem['jaxnets']} | {mem['pytorch']} |"
            )
        for r in report["models"]:
            if r.get("note"):
                lines.append(f"\n{r['model']}: {r['note']}.")
            for fw in FRAMEWORKS:
                if _get(r, fw, "memory", "error"):
                    lines.append(f"\n{r['model']} {fw} memory probe failed: {r[fw]['memory']['error'][-300:]}")
    if report.get("ops"):
        lines += [
            "",
            "Convolutions, NHWC float32 (PyTorch: channels_last), ms per call; all = forward + dX + dW; "
            "ratio = PyTorch ms / jaxnets ms.",
            "",
            "| op | input NHWC | kernel HWIO | stride | groups | mode | jaxnets (ms) | PyTorch (ms) | ratio |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for o in report["ops"]:
            lines.append(
                f"| {o['op']} | {'x'.join(map(str, o['input_nhwc']))} | {'x'.join(map(str, o['kernel_hwio']))} "
                f"| {o['stride']} | {o['groups']} | {o['mode']} | {o['jaxnets_ms']:.2f} | {o['pytorch_ms']:.2f} "
                f"| {o['ratio']:.2f}x |"
            )
    e = report.get("enas_search")
    if e:
        lines += [
            "",
            f"ENAS search network, arc traced, beside the fixed child of the same arc ({e['num_layers']} layers, "
            f"{e['num_filters']} filters, {e['image_size']}x{e['image_size']}, batch {e['batch']}); "
            f"target traced / fixed <= {e['target_ratio']}x. Arc: `{e['arc']}`.",
            "",
            "| step | s/step | img/s | compile (s) |",
            "|---|---|---|---|",
            f"| shared, arc traced | {e['traced_seconds']:.3f} | {e['traced_images_per_s']:.1f} "
            f"| {e['traced_compile_seconds']:.1f} |",
            f"| fixed child | {e['fixed_seconds']:.3f} | {e['fixed_images_per_s']:.1f} "
            f"| {e['fixed_compile_seconds']:.1f} |",
            f"| traced / fixed | {e['ratio_traced_over_fixed']:.2f}x | | |",
        ]
    return "\n".join(lines) + "\n"


def _print_model(r: dict) -> None:
    text = f"{r['model']} ({r['image_size']}x{r['image_size']}, batch {r['batch']}): jaxnets train " \
           f"{r['jaxnets']['train_images_per_s']:.1f} img/s fwd {r['jaxnets']['forward_images_per_s']:.1f} img/s"
    if r["pytorch"] is not None:
        text += f" | pytorch train {r['pytorch']['train_images_per_s']:.1f} fwd " \
                f"{r['pytorch']['forward_images_per_s']:.1f} | ratio train {r['train_ratio']:.2f}x " \
                f"fwd {r['forward_ratio']:.2f}x"
    print(text + f" (compile {r['jaxnets']['compile_seconds']:.1f}s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None,
                        help="comma-separated; default: all six (--tiny: mobilenet_v2,enas_macro)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, --tiny 1)")
    parser.add_argument("--op-rounds", type=int, default=None, help="rounds per conv op (default 21, --tiny 1)")
    parser.add_argument("--parts", default="models,ops,enas_search")
    parser.add_argument("--json", default=None, help="default benchmarks/results/cpu.json (--tiny: cpu_tiny.json)")
    parser.add_argument("--tiny", action="store_true", help="every code path on tiny shapes, for the test")
    parser.add_argument("--memory-probe", nargs=2, metavar=("MODEL", "FRAMEWORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    specs = model_specs(args.tiny)
    if args.memory_probe:
        model_name, framework = args.memory_probe
        print(PROBE_PREFIX + json.dumps(memory_probe(model_name, framework, args.tiny)), flush=True)
        return

    models = (args.models or ("mobilenet_v2,enas_macro" if args.tiny else ",".join(specs))).split(",")
    unknown = sorted(set(models) - set(specs))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(specs)}")
    missing = sorted({specs[m].jax_name for m in models} - set(list_models()))
    if missing:
        parser.error(f"jaxnets has no model(s) {', '.join(missing)}")
    parts = set(args.parts.split(","))
    if parts - {"models", "ops", "enas_search"}:
        parser.error("--parts takes models, ops, enas_search")
    rounds = args.rounds or (1 if args.tiny else 5)
    op_rounds = args.op_rounds or (1 if args.tiny else 21)
    json_path = args.json or os.path.join(RESULTS, "cpu_tiny.json" if args.tiny else "cpu.json")

    env = environment()
    env["compilation_cache"] = share_compilations()
    report = {"environment": env, "tiny": args.tiny, "rounds": rounds, "op_rounds": op_rounds,
              "ratio": "jaxnets images/s / PyTorch images/s (ops: PyTorch ms / jaxnets ms); > 1: jaxnets faster",
              "models": [], "ops": [], "enas_search": None}
    if "models" in parts:
        for name in models:
            report["models"].append(measure_model(name, specs[name], rounds, args.tiny))
            _print_model(report["models"][-1])
    if "ops" in parts:
        for op in conv_ops(args.tiny):
            for mode in op.modes:
                report["ops"].append(measure_op(op, mode, op_rounds))
                o = report["ops"][-1]
                print(f"{op.name} {mode}: jaxnets {o['jaxnets_ms']:.2f} ms, pytorch {o['pytorch_ms']:.2f} ms",
                      flush=True)
        jax.clear_caches()
    if "enas_search" in parts:
        report["enas_search"] = measure_enas_search(rounds, args.tiny)
        e = report["enas_search"]
        print(f"enas search: traced {e['traced_seconds']:.3f}s fixed {e['fixed_seconds']:.3f}s "
              f"ratio {e['ratio_traced_over_fixed']:.2f}x", flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    markdown = to_markdown(report)
    with open(os.path.splitext(json_path)[0] + ".md", "w") as f:
        f.write(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
