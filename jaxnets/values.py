"""The kinds of value the config checks share (a bool is no number to them, and NaN is no number a field can mean).
Imports nothing of jaxnets, JAX or TensorFlow."""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
