"""Where a training step's time goes, jaxnets beside PyTorch, by kind of work: each framework's own profiler on
the step benchmarks/cpu.py times (harness/runners.py: same inputs, SGD with momentum, BatchNorm statistics updated).

    python benchmarks/profile_step.py [--models resnext50_32x4d,mobilenet_v2] [--steps 5] [--json PATH] [--tiny]

jaxnets: `jax.profiler.trace` of `--steps` compiled steps (its Perfetto JSON): the time of each XLA:CPU thunk,
classified by the instruction of the compiled program it runs (its span's `hlo_op`, looked up in
`compiled.as_text()`): oneDNN convolutions by FFI target (forward, backward-data, backward-weights; a forward's
BN, residual and activation run as its post-ops count as its forward, and the BN + activation a backward-weights
call recomputes on its input as that call), then by the
source `op_name` XLA keeps: instructions outside the differentiated function are the optimizer's update; inside,
by the Flax module path (a `bn`/`norm` module: BatchNorm; `relu`: activations) and by the pass (`transpose(...)`:
backward). PyTorch: `torch.profiler` over the same steps, each op's self time classified alike (under
`Optimizer.step`: the update). Each framework is profiled in a child process of its own.
Per step, in ms; "share" is of the framework's profiled total. The profiled totals are op time, not the step's
wall clock (given beside them): XLA runs independent thunks side by side on the cores, PyTorch one op at a time
with the cores inside the op, and its profiler's own cost lands in each op's self time (either total may exceed
the wall clock). Compare shares within a framework: the rows say where to look, cpu.py's ratios how fast.

Set ONEDNN_MAX_CPU_ISA=AVX2 to profile both frameworks as on an AVX2 CPU (oneDNN honours it on both sides).
Writes --json (default benchmarks/results/profile_step.json) and the markdown next to it. Imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile

import jax
import torch
from cpu import ModelSpec, model_spec
from harness import environment, results
from harness.memory import in_child, report_to_parent
from harness.rounds import timed
from memory_probe import build_runner

DEFAULT_MODELS = ("resnext50_32x4d", "mobilenet_v2")
CATEGORIES = ("conv forward", "conv backward (dX + dW)", "  of which dX", "  of which dW", "BatchNorm forward",
              "BatchNorm backward", "activations", "optimizer update", "copies and layout", "other forward",
              "other backward")
# Each of jaxnets' oneDNN calls (the extension's FFI targets: tests/test_benchmarks.py holds this map to them).
FFI_CONV = {
    "jaxnets_onednn_conv_forward": "conv forward",
    "jaxnets_onednn_conv_forward_fused": "conv forward",  # with its BN, residual and activation as post-ops
    "jaxnets_onednn_conv_input_gradient": "  of which dX",
    "jaxnets_onednn_conv_kernel_gradient": "  of which dW",
    "jaxnets_onednn_conv_kernel_gradient_of_activated": "  of which dW",  # its input's BN + activation recomputed
}
LAYOUT_OPS = {"copy", "transpose", "bitcast", "slice", "concatenate", "pad", "dynamic-slice",
              "dynamic-update-slice", "copy-start", "copy-done"}


# --- jaxnets --------------------------------------------------------------------------------------------------


def instruction_categories(hlo_text: str) -> dict[str, str | None]:
    """{instruction name: category} for every instruction of the compiled module (names are unique in it);
    None for the thunks that only run others (a while loop, a call, a conditional), whose work is counted in
    the thunks of their bodies."""
    categories = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s+(?:ROOT )?%(\S+) = .*? ([a-z\-]+)\(", line)
        if match is None:
            continue
        name, opcode = match.groups()
        target = re.search(r'custom_call_target="([^"]+)"', line)
        op_name = re.search(r'op_name="([^"]*)"', line)
        categories[name] = None if opcode in ("while", "call", "conditional") else jax_category(
            opcode, target.group(1) if target else None, op_name.group(1) if op_name else "")
    return categories


def jax_category(opcode: str, target: str | None, op_name: str) -> str:
    backward = "transpose(" in op_name
    if target in FFI_CONV:
        return FFI_CONV[target]
    if target is not None and target.startswith("jaxnets_"):  # (counted as "other", it would hide a convolution)
        raise ValueError(f"profile_step.py: no category for jaxnets' FFI target {target}: add it to FFI_CONV")
    if opcode == "convolution":
        return "conv backward (dX + dW)" if backward else "conv forward"
    if opcode in LAYOUT_OPS and not re.search(r"/(bn|norm)", op_name):
        return "copies and layout"
    if "jvp(" not in op_name:
        return "optimizer update" if op_name else "copies and layout"
    modules = op_name.split("/")
    if any(re.search(r"(^|_)bn\d*$|norm", m, re.IGNORECASE) for m in modules):
        return "BatchNorm backward" if backward else "BatchNorm forward"
    if re.search(r"relu", op_name):
        return "activations"
    return "other backward" if backward else "other forward"


def wall_seconds_per_step(runner, steps: int) -> float:
    """After two warm-up steps, the wall seconds of one of `steps` steps (outside any profiler)."""
    runner.train(2)
    return timed(lambda: runner.train(steps), per=steps)()


def profile_jaxnets(spec: ModelSpec, steps: int) -> dict:
    runner = build_runner("jaxnets", dataclasses.asdict(spec), forward=False)
    categories = instruction_categories(runner.train_step.as_text())
    wall = wall_seconds_per_step(runner, steps)
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir, create_perfetto_trace=True):
            runner.train(steps)
        (path,) = glob.glob(f"{log_dir}/**/perfetto_trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    seconds, unknown = collections.defaultdict(float), set()
    for event in events:  # a thunk's span names its instruction; the runtime's own spans name none
        instruction = event.get("args", {}).get("hlo_op")
        if event.get("ph") != "X" or instruction is None or event["args"].get("hlo_module") != "jit_step":
            continue
        if instruction not in categories:
            unknown.add(instruction)
        elif categories[instruction] is not None:
            seconds[categories[instruction]] += event.get("dur", 0) / 1e6
    return summarise(seconds, steps, wall, extra={"instructions_not_in_the_program": sorted(unknown)})


# --- PyTorch --------------------------------------------------------------------------------------------------


def torch_category(op: str, under_optimizer: bool) -> str | None:
    if under_optimizer:
        return "optimizer update"
    if op in ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv2d",
              "aten::_mkldnn_convolution"):
        return "conv forward"
    if "convolution_backward" in op:
        return "conv backward (dX + dW)"
    if "batch_norm" in op:
        return "BatchNorm backward" if "backward" in op else "BatchNorm forward"
    if re.search(r"relu|threshold|hardtanh|clamp", op):
        return "activations"
    if op in ("aten::copy_", "aten::contiguous", "aten::clone", "aten::to", "aten::_to_copy", "aten::empty_like",
              "aten::as_strided", "aten::view", "aten::reshape", "aten::t", "aten::transpose", "aten::permute"):
        return "copies and layout"
    if op.startswith("autograd::") or op.startswith("Optimizer.") or op.startswith("ProfilerStep"):
        return None  # wrappers: their children's self times are counted
    return "other backward" if "backward" in op.lower() or "Backward" in op else "other forward"


def profile_pytorch(spec: ModelSpec, steps: int) -> dict:
    runner = build_runner("pytorch", dataclasses.asdict(spec), forward=False)
    wall = wall_seconds_per_step(runner, steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        runner.train(steps)
    seconds = collections.defaultdict(float)
    for event in profiler.events():
        parent, under_optimizer = event.cpu_parent, event.name.startswith("Optimizer.step")
        while parent is not None and not under_optimizer:
            under_optimizer, parent = parent.name.startswith("Optimizer.step"), parent.cpu_parent
        category = torch_category(event.name, under_optimizer)
        if category is not None:
            seconds[category] += event.self_cpu_time_total / 1e6
    return summarise(seconds, steps, wall)


def profile_in_child(name: str, framework: str, steps: int, tiny: bool) -> dict:
    """`framework`'s profile of the model's step in a process of its own (as cpu.py times it: in one process the
    two frameworks change each other's speed, harness/workers.py)."""
    profile = in_child([os.path.abspath(__file__), "--profile-child", name, framework, "--steps", str(steps),
                        *(["--tiny"] if tiny else [])])
    if "error" in profile:
        raise RuntimeError(f"profiling {name} in {framework} failed: {profile['error']}")
    return profile


def summarise(seconds: dict[str, float], steps: int, wall: float, extra: dict | None = None) -> dict:
    seconds = collections.defaultdict(float, seconds)
    seconds["conv backward (dX + dW)"] += seconds["  of which dX"] + seconds["  of which dW"]  # (jaxnets' split)
    total = sum(v for k, v in seconds.items() if not k.startswith("  "))
    return {"wall_seconds_per_step": wall, "profiled_seconds_per_step": total / steps,
            "seconds_per_step": {k: seconds[k] / steps for k in CATEGORIES}, **(extra or {})}


# --- report ---------------------------------------------------------------------------------------------------


def table_rows(profiles: dict[str, dict]) -> list[list[str]]:
    jax_profile, torch_profile = profiles["jaxnets"], profiles.get("pytorch")
    rows = []
    for category in CATEGORIES:
        ms = jax_profile["seconds_per_step"][category] * 1e3
        row = [category, f"{ms:.1f}", f"{ms / (jax_profile['profiled_seconds_per_step'] * 1e3):.0%}"]
        if torch_profile is not None and category.startswith("  "):  # (PyTorch's one backward call does both)
            row += ["-", "-", "-"]
        elif torch_profile is not None:
            torch_ms = torch_profile["seconds_per_step"][category] * 1e3
            row += [f"{torch_ms:.1f}", f"{torch_ms / (torch_profile['profiled_seconds_per_step'] * 1e3):.0%}"]
            row.append(f"{torch_ms / ms:.2f}x" if ms > 0.05 and torch_ms > 0.05 else "-")
        rows.append(row)
    for label, key in (("profiled total", "profiled_seconds_per_step"), ("step, wall clock", "wall_seconds_per_step")):
        row = [f"**{label}**", f"{jax_profile[key] * 1e3:.1f}", ""]
        if torch_profile is not None:
            row += [f"{torch_profile[key] * 1e3:.1f}", "", f"{torch_profile[key] / jax_profile[key]:.2f}x"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="toy sizes, every code path (for the test)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--profile-child", nargs=2, metavar=("MODEL", "FRAMEWORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_child:
        name, framework = args.profile_child
        profile = profile_jaxnets if framework == "jaxnets" else profile_pytorch
        report_to_parent(profile(model_spec(name, args.tiny), args.steps))
        return
    json_path = args.json or results.default_path("profile_step", args.tiny)

    report = {"environment": environment.capture(), "steps": args.steps, "models": {}}
    command = f"python benchmarks/profile_step.py --models {args.models} --steps {args.steps}" + (
        " --tiny" if args.tiny else "")
    body = [f"Milliseconds per training step by kind of work (`{command}`; see the script's docstring for how each "
            "is classified). ratio = PyTorch ms / jaxnets ms (> 1: jaxnets spends less).", ""]
    for name in args.models.split(","):
        spec = model_spec(name, args.tiny)  # the sizes and the twin of benchmarks/cpu.py
        frameworks = ("jaxnets", "pytorch") if spec.twin_key is not None else ("jaxnets",)
        profiles = {fw: profile_in_child(name, fw, args.steps, args.tiny) for fw in frameworks}
        report["models"][name] = {"image_size": spec.size, "batch": spec.batch, **profiles}
        headers = ["kind of work", "jaxnets ms", "share"] + (["PyTorch ms", "share", "ratio"] if "pytorch" in
                                                                profiles else [])
        body += [f"### {name} ({spec.size}x{spec.size}, batch {spec.batch})", "",
                 *results.table(headers, table_rows(profiles)), ""]
    print(results.write(json_path, report, "Where a training step's time goes", body))


if __name__ == "__main__":
    main()
