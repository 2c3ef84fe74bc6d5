"""The benchmark commands run end to end in --tiny mode: every code path on tiny shapes, no speed checked."""

import json
import math
import os
import subprocess
import sys

import pytest
from helpers import REPO, cpu_devices_env

from train import restart_environment


def read_results(json_path):
    """The JSON a benchmark wrote, after checking that its markdown says what produced the figures."""
    with open(json_path) as f:
        report = json.load(f)
    markdown, env = json_path.with_suffix(".md").read_text(), report["environment"]
    for fact in (env["cpu"]["model_name"], "ISA: ", "ONEDNN_MAX_CPU_ISA=", f"jax {env['versions']['jax']}",
                 f"commit {env['git_commit'][:12]}", env["date"]):
        assert fact in markdown, f"{fact!r} missing from the header of {json_path.with_suffix('.md')}"
    return report


def run_tiny(script, json_path, models, *extra):
    command = [sys.executable, f"benchmarks/{script}", "--tiny", "--models", ",".join(models), "--json", str(json_path),
               *extra]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return read_results(json_path)


def test_cpu_benchmark_tiny(tmp_path):
    models = ["enas_macro"]  # every code path (gpu.py's test takes a torchvision network through the same harness)
    report = run_tiny("cpu.py", tmp_path / "cpu.json", models)
    assert [row["model"] for row in report["models"]] == models
    for row in report["models"]:
        for framework in ("jaxnets", "pytorch"):
            assert row[framework]["train_images_per_s"] > 0 and row[framework]["forward_images_per_s"] > 0
            assert row[framework]["memory"]["peak_mib"] > 0, row[framework]["memory"]
        # each peak measured in a process holding its own framework only, as its users' processes do
        assert row["jaxnets"]["memory"]["frameworks_loaded"] == ["jax"]
        assert row["pytorch"]["memory"]["frameworks_loaded"] == ["torch"]
        assert math.isfinite(row["train_ratio"]) and math.isfinite(row["forward_ratio"])
        # each framework timed in a process of its own: in one process they change each other's speed
        assert row["jaxnets"]["worker_pid"] != row["pytorch"]["worker_pid"]
    assert report["ops"] and all(math.isfinite(op["ratio"]) for op in report["ops"])
    assert math.isfinite(report["enas_search"]["ratio_traced_over_fixed"])
    assert not report["environment"]["tensorflow_imported"]
    # jaxnets' workers stand in for train.py's steps: in the environment train.py restarts itself in
    trainer = restart_environment() or os.environ
    assert report["worker_glibc_tunables"] == {"jaxnets": trainer.get("GLIBC_TUNABLES"),
                                               "pytorch": os.environ.get("GLIBC_TUNABLES")}
    assert report["worker_ld_preload"] == {"jaxnets": trainer.get("LD_PRELOAD"),
                                           "pytorch": os.environ.get("LD_PRELOAD")}


def test_gpu_benchmark_tiny(tmp_path):
    models = ["resnet18"]  # the shallowest torchvision network: every code path, a short compile
    report = run_tiny("gpu.py", tmp_path / "gpu.json", models)
    assert [row["model"] for row in report["models"]] == models
    for row in report["models"]:
        assert row["jaxnets"]["train_images_per_s"] > 0 and row["pytorch"]["train_images_per_s"] > 0
        assert math.isfinite(row["train_ratio"])
    assert not report["environment"]["tensorflow_imported"]


def test_inference_benchmark_tiny(tmp_path):
    """Each contender (jaxnets, PyTorch, the exported .tflite in LiteRT and .onnx in ONNX Runtime) timed on a tiny
    ENAS child, ratios finite, no TensorFlow imported by the benchmark itself (its export runs in a child)."""
    report = run_tiny("inference.py", tmp_path / "inference.json", ["enas_macro"])
    (row,) = report["models"]
    for framework in ("jaxnets", "pytorch", "litert", "onnxruntime"):
        assert row[framework]["latency_ms"] > 0 and row[framework]["images_per_s"] > 0, framework
    for other in ("pytorch", "litert", "onnxruntime"):
        assert math.isfinite(row[f"latency_ratio_{other}"]) and math.isfinite(row[f"throughput_ratio_{other}"])
    assert not report["environment"]["tensorflow_imported"]
    markdown = (tmp_path / "inference.md").read_text()
    assert "| enas_macro (8px) |" in markdown and "ONNX Runtime ms" in markdown


def test_saliency_benchmark_tiny(tmp_path):
    """Both frameworks' gradient with respect to the pixels timed on a tiny ENAS child, the ratio finite."""
    report = run_tiny("saliency.py", tmp_path / "saliency.json", ["enas_macro"], "--batch", "2")
    (row,) = report["models"]
    assert row["batch"] == 2 and row["jaxnets"]["images_per_s"] > 0 and row["pytorch"]["images_per_s"] > 0
    assert math.isfinite(row["ratio"]) and not report["environment"]["tensorflow_imported"]
    assert "| enas_macro (8px) |" in (tmp_path / "saliency.md").read_text()


def test_loop_overhead_benchmark_runs_a_short_quickstart(tmp_path):
    json_path = tmp_path / "loop.json"
    command = [sys.executable, "benchmarks/loop_overhead.py", "--epochs", "3", "--log_every_steps", "20",
               "--bare_steps", "20", "--rounds", "1", "--json", str(json_path)]
    # One device, compiled like the suite: 46 s of CPU against 60 s as users compile (on a Zen 3; with the decomposed
    # lowering forced, whose 183 steps then run slower, 136 s against 79 s).
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=cpu_devices_env(1))
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    report = read_results(json_path)
    (only_round,) = report["rounds"]
    assert len(only_round["loop_windows"]) == 3  # 63 steps logged at 20, 40, 60 and 63
    assert len(only_round["bare_step_measurements"]) == 6 and math.isfinite(report["ratio_loop_over_bare"])
    assert report["steps_per_dispatch"] == 10 and report["checkpoint_every_steps"] == 210  # the recipe's
    assert report["log_every_steps"] == 20 and report["bare_steps"] == 20


def test_profile_step_has_a_row_for_each_of_jaxnets_onednn_calls(monkeypatch):
    """Every FFI target the extension registers is a convolution direction in profile_step.py's table (one it did
    not know was counted as "other backward": ResNeXt-29's recomputed-input dW, 8 s of a 27 s AVX2 step), and a
    target added later stops the profile instead of hiding there."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import profile_step

    from jaxnets.ops import onednn

    assert set(profile_step.FFI_CONV) == set(onednn._built_extension().handlers())
    assert profile_step.jax_category("custom-call", "jaxnets_onednn_conv_kernel_gradient_of_activated",
                                     "jvp(step)/transpose(jvp(conv))") == "  of which dW"
    with pytest.raises(ValueError, match="no category for jaxnets' FFI target jaxnets_onednn_conv_new"):
        profile_step.jax_category("custom-call", "jaxnets_onednn_conv_new", "jvp(step)/conv")


def test_profile_of_a_step_classifies_both_frameworks_work(tmp_path):
    """benchmarks/profile_step.py on a tiny ENAS child: each framework's profiler sees its convolutions (jaxnets'
    oneDNN calls by direction), BatchNorm and the optimizer's update; every jaxnets thunk is an instruction of the
    compiled step (the profile and the program agree on names)."""
    report = run_tiny("profile_step.py", tmp_path / "profile.json", ["enas_macro"], "--steps", "1")
    profiles = report["models"]["enas_macro"]
    jax_ms, torch_ms = profiles["jaxnets"]["seconds_per_step"], profiles["pytorch"]["seconds_per_step"]
    for kind in ("conv forward", "  of which dX", "  of which dW", "BatchNorm forward", "BatchNorm backward",
                 "optimizer update"):
        assert jax_ms[kind] > 0, (kind, jax_ms)
    for kind in ("conv forward", "conv backward (dX + dW)", "BatchNorm forward", "BatchNorm backward",
                 "optimizer update"):
        assert torch_ms[kind] > 0, (kind, torch_ms)
    assert profiles["jaxnets"]["instructions_not_in_the_program"] == []
    assert "| **step, wall clock** |" in (tmp_path / "profile.md").read_text()
