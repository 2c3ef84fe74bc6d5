"""cpu.py's memory probe: one framework's train-step peak RSS, in a process that loads only that framework.

    python benchmarks/memory_probe.py FRAMEWORK SPEC_JSON

FRAMEWORK: jaxnets or pytorch; SPEC_JSON: cpu.py's ModelSpec as a dict ("name", "size", "batch", "num_classes",
"overrides", "twin_key": the registry's twin). Builds the step (jaxnets: compiles it) and runs it once, so that
both frameworks hold the same state between steps (parameters, BN statistics, SGD momentum; PyTorch creates its
buffers in its first step, no gradients), then reports `harness.memory.peak_rss` of 3 more steps and which
frameworks the process loaded.
Each framework is imported only in its branch: with both loaded (as cpu.py's own processes do), each peak also
counts the other framework's libraries (PyTorch's import ~220 MiB of RSS, JAX's ~150 here).
"""

from __future__ import annotations

import json
import sys

from harness.batches import random_batch
from harness.memory import peak_rss, report_to_parent

MEMORY_STEPS = 3


def build_runner(framework: str, spec: dict, forward: bool = True):
    """The model's runner in `framework` (cpu.py's workers use it too), importing that framework only."""
    images, labels = random_batch(spec["batch"], spec["size"], spec["num_classes"])
    if framework == "jaxnets":
        from harness.runners import JaxRunner

        from jaxnets.models import create_model

        model = create_model(spec["name"], num_classes=spec["num_classes"], **spec["overrides"])
        return JaxRunner(model, images, labels, forward=forward)
    import torch
    from harness.torch_runners import TorchRunner, twin

    torch.manual_seed(0)
    return TorchRunner(twin(spec["twin_key"], spec["num_classes"], **spec["overrides"])[0](), images, labels)


def main() -> None:
    framework, spec = sys.argv[1], json.loads(sys.argv[2])
    if framework not in ("jaxnets", "pytorch"):
        sys.exit(f"memory_probe.py: FRAMEWORK is jaxnets or pytorch, got {framework!r}")
    runner = build_runner(framework, spec, forward=False)
    runner.train()  # warm-up
    report_to_parent({"compile_seconds": getattr(runner, "compile_seconds", None),
                      **peak_rss(runner.train, MEMORY_STEPS),
                      "frameworks_loaded": sorted(m for m in ("jax", "torch") if m in sys.modules)})


if __name__ == "__main__":
    main()
