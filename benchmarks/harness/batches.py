"""What both frameworks' runners and the A/B scripts share, with neither framework imported: the inputs and the
optimizer's settings."""

from __future__ import annotations

import numpy as np

LEARNING_RATE, MOMENTUM = 0.1, 0.9


def random_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal NCHW float32 images and uniform labels: a step's speed does not depend on them."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 3, size, size), dtype=np.float32), rng.integers(0, num_classes, batch)


def pointwise_operands(n: int, h: int, w: int, c: int, o: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A 1x1 convolution's float32 operands: standard-normal x [n, h, w, c], kernel [1, 1, c, o] (scaled as an
    initialiser would) and dy [n, h, w, o] (pointwise_ab.py, kernel_gradient_ab.py)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c), dtype=np.float32)
    kernel = rng.standard_normal((1, 1, c, o), dtype=np.float32) / np.float32(np.sqrt(c))
    return x, kernel, rng.standard_normal((n, h, w, o), dtype=np.float32)
