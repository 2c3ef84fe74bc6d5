"""Convolution cases and oneDNN checks shared by the convolution tests (test modules import this, never each
other)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import jax.numpy as jnp
import numpy as np

ONEDNN_WHEEL_EXISTS = sys.platform == "linux" and platform.machine() == "x86_64"

# (input size, in channels, out channels, kernel, stride, padding, groups): each path of each lowering.
CASES = {
    "pointwise": (9, 16, 24, 1, 1, 0, 1),
    "pointwise_strided": (9, 16, 24, 1, 2, 0, 1),
    "pointwise_strided_padded": (4, 16, 24, 1, 2, 1, 1),
    "dense_3x3": (9, 8, 12, 3, 1, 1, 1),
    "dense_3x3_on_2x2": (2, 16, 16, 3, 1, 1, 1),  # a kernel larger than its input (ResNeXt's last stage)
    "dense_3x3_strided_odd": (7, 8, 8, 3, 2, 1, 1),
    "dense_5x5": (9, 8, 8, 5, 1, 2, 1),
    "dense_7x7_strided": (9, 3, 8, 7, 2, 3, 1),
    "grouped_block_diagonal": (9, 32, 32, 3, 1, 1, 8),  # 4 channels per group
    "grouped_block_diagonal_strided": (9, 32, 64, 3, 2, 1, 8),
    "grouped_per_tap": (9, 64, 64, 3, 1, 1, 2),  # 32 channels per group
    "grouped_per_tap_strided": (9, 64, 32, 3, 2, 1, 2),
    "grouped_1x1": (9, 32, 32, 1, 1, 0, 4),
    "grouped_3x3_on_1x1": (1, 32, 32, 3, 1, 1, 8),
    "depthwise_3x3": (9, 24, 24, 3, 1, 1, 24),
    "depthwise_3x3_strided": (9, 24, 24, 3, 2, 1, 24),
    "depthwise_5x5": (9, 12, 12, 5, 1, 2, 12),
}


def random_case(case, dtype=np.float32):
    size, cin, cout, k, stride, padding, groups = CASES[case]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, size, size, cin), dtype=np.float32), dtype)
    kernel = jnp.asarray(rng.standard_normal((k, k, cin // groups, cout), dtype=np.float32), dtype)
    return x, kernel, stride, padding, groups


def onednn_run_logged(script: str, shapes: list, isa: str | None = None) -> tuple[list[str], float]:
    """`script` (which reads its shapes as JSON from argv[1] and prints "worst <difference>") in a process of its own
    under ONEDNN_VERBOSE, oneDNN held to `isa` where given (so that an AVX-512 machine runs AVX2's paths too): (the
    primitives oneDNN executed, one line each; the largest difference the script printed)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("ONEDNN_", "DNNL_", "JAXNETS_"))}
    env = {**inherited, "ONEDNN_VERBOSE": "1", "JAX_PLATFORMS": "cpu", **({"ONEDNN_MAX_CPU_ISA": isa} if isa else {})}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(shapes)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    executed = [line for line in done.stdout.splitlines() if ",exec," in line]
    return executed, float(done.stdout.split("worst ")[-1])
