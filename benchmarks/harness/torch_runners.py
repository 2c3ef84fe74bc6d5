"""One model's training step and eval forward in its PyTorch twin, built as harness/runners.py builds jaxnets':
same inputs, SGD with momentum 0.9 at lr 0.1, softmax cross-entropy, BatchNorm statistics updated, one
`train(steps)` call = `steps` steps and one synchronisation. Imports no JAX.

The twins come from the model registry (`model_entry(name).reference.twin`, a key of tests/torch_twins'
`TWINS`): benchmarks keep no table of their own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch_twins import TWINS  # tests/ is on sys.path: see harness/__init__.py

from harness.batches import LEARNING_RATE, MOMENTUM


def twin(key: str | None, num_classes: int, **overrides) -> tuple[Callable[[], torch.nn.Module], str] | None:
    """A builder of the PyTorch twin `key` (a registered model's `model_entry(name).reference.twin`), with jaxnets'
    `overrides` (such as the ENAS child's arc and depth), and how it is built, for the results; None for no key."""
    if key is None:
        return None
    arguments = "".join(f", {k}={v!r}" for k, v in overrides.items())
    return (lambda: TWINS[key](num_classes=num_classes, **overrides),
            f"torch_twins.TWINS[{key!r}](num_classes={num_classes}{arguments})")



class TorchRunner:
    """The same step in PyTorch: channels_last module and input, torch.optim.SGD, the default thread count.
    `torch_compile`: `torch.compile(dynamic=False)`, compiled by one step here (`compile_seconds`); `autocast`: the
    compute dtype under `torch.autocast` (parameters stay float32), cross-entropy in float32."""

    def __init__(self, module: torch.nn.Module, images_nchw: np.ndarray, labels: np.ndarray, *,
                 device: str = "cpu", torch_compile: bool = False, autocast: torch.dtype | None = None):
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        module = module.to(device=self.device, memory_format=torch.channels_last).train()
        self.model = torch.compile(module, dynamic=False) if torch_compile else module
        self.x = torch.from_numpy(images_nchw).to(self.device).contiguous(memory_format=torch.channels_last)
        self.y = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        self.optimizer = torch.optim.SGD(module.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        self.autocast = autocast
        self.compile_seconds = None
        if torch_compile:
            start = time.perf_counter()
            self.train()  # torch.compile traces and compiles forward and backward on the first call
            self.compile_seconds = time.perf_counter() - start

    def _autocast(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def train(self, steps: int = 1) -> None:
        for _ in range(steps):
            with self._autocast():
                logits = self.model(self.x)
            loss = F.cross_entropy(logits.float(), self.y)
            loss.backward()
            self.optimizer.step()
            # Gradients freed here rather than at the next step's start: between steps both frameworks then
            # hold the same state (parameters, BN statistics, momentum), which the memory probe relies on.
            self.optimizer.zero_grad(set_to_none=True)
        self._synchronize()

    def forward(self) -> None:
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            self.model(self.x)
        self.model.train()
        self._synchronize()

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def device_peak_gib(self) -> float | None:
        """The CUDA allocator's peak since this runner was built (None on the CPU)."""
        return torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None
