"""What a figure was measured on, for the header of every result.

This project's machines are alike by name but not by speed: 2-core VMs sold as "AMD EPYC" are Zen 4 (AVX-512)
on some days and Zen 3 (AVX2 only, 2-3x slower on these benchmarks) on others, and `ONEDNN_MAX_CPU_ISA`
makes one stand in for the other. So the record keeps the CPU's family and model numbers and its vector
ISA beside the name, and every variable that changes which kernels run or how many threads run them.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys

from harness import REPO

# The vector extensions that decide which kernels oneDNN and XLA pick.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16")
VARIABLES = (
    "ONEDNN_MAX_CPU_ISA",  # oneDNN's ISA cap, in jaxnets' kernels and PyTorch's alike
    "XLA_FLAGS", "JAXNETS_CONV_LOWERING", "DNNL_MAX_CPU_ISA", "JAX_PLATFORMS", "XLA_PYTHON_CLIENT_PREALLOCATE",
    "JAX_COMPILATION_CACHE_DIR",  # set: compile times may be loads of cached executables
    "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
)
PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "numpy",
            "onednn-cpu-gomp", "torch", "torchvision", "triton", "tensorflow", "tensorflow-cpu",
            "tensorflow-datasets", "ai-edge-litert", "onnxruntime", "jax2onnx")


def capture(**extra) -> dict:
    """The environment of this process now; `extra` (a device's name, a framework's settings) is added as is."""
    cpu = _cpu()
    status = _git("status", "--porcelain", "--untracked-files=no")
    memory = _memory_gib()
    env = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "machine": f"{cpu['model_name']} ({platform.machine()}, family {cpu['family']} model {cpu['model']}), "
                   f"{os.cpu_count()} cores" + (f", {memory:.0f} GiB RAM" if memory else ""),
        "cpu": cpu,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: v for p in PACKAGES if (v := _version(p)) is not None},
        "variables": {name: os.environ.get(name) for name in VARIABLES},
        "nvidia_smi": _nvidia_smi(),
    }
    # Only what this process already imported: asking would import a framework the script does not use.
    if "jax" in sys.modules:
        import jax

        env["jax_backend"] = jax.default_backend()
        env["jax_devices"] = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    if "torch" in sys.modules:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["torch_mkldnn"] = torch.backends.mkldnn.is_available()
    env["tensorflow_imported"] = "tensorflow" in sys.modules
    return {**env, **extra}


def _cpu() -> dict:
    """lscpu's model name, family/model numbers and the ISA flags of ISA_FLAGS it lists (/proc/cpuinfo without
    lscpu)."""
    fields = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30, env={**os.environ, "LC_ALL": "C"},
                              check=True).stdout
        keys = {"Model name": "model_name", "CPU family": "family", "Model": "model", "Flags": "flags"}
    except (OSError, subprocess.SubprocessError):
        try:
            with open("/proc/cpuinfo") as f:
                text = f.read().split("\n\n")[0]
        except OSError:
            text = ""
        keys = {"model name": "model_name", "cpu family": "family", "model": "model", "flags": "flags"}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            fields.setdefault(keys[key.strip()], value.strip())
    flags = set(fields.get("flags", "").split())
    return {
        "model_name": fields.get("model_name") or platform.processor() or platform.machine(),
        "family": fields.get("family"),
        "model": fields.get("model"),
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _nvidia_smi() -> str | None:
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def summary(env: dict) -> list[str]:
    """The environment as the markdown lines that head a result."""
    isa = ", ".join(env["cpu"]["isa"]) or "none of " + ", ".join(ISA_FLAGS)
    # The first three (they pick kernels) set or not, the others where set.
    variables = ", ".join(f"{k}={'unset' if v is None else v}" for k, v in env["variables"].items()
                          if k in VARIABLES[:3] or v is not None)
    threads = f"{env['usable_cores']} usable cores" + (
        f", torch {env['torch_threads']} threads" if "torch_threads" in env else "")
    commit = env["git_commit"] or "unknown"
    lines = [
        f"- machine: {env['machine']}; ISA: {isa}; {threads}; load average at start {env['load_average_at_start']}",
        f"- versions: Python {env['python']}, " + ", ".join(f"{p} {v}" for p, v in env["versions"].items()),
        f"- variables: {variables}",
        f"- commit {commit[:12]}{' (uncommitted changes)' if env['git_dirty'] else ''}, {env['date']}",
    ]
    if env.get("jax_backend"):
        lines.insert(1, f"- JAX: {env['jax_backend']}, {env['jax_devices']}")
    if env.get("nvidia_smi"):
        lines.insert(1, f"- GPU: {env['nvidia_smi']}")
    return lines
