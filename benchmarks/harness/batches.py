"""What both frameworks' runners share, with neither framework imported: the inputs and the optimizer's settings."""

from __future__ import annotations

import numpy as np

LEARNING_RATE, MOMENTUM = 0.1, 0.9


def random_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal NCHW float32 images and uniform labels: a step's speed does not depend on them."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 3, size, size), dtype=np.float32), rng.integers(0, num_classes, batch)
