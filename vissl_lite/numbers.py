"""Numbers as written to JSON: floats to 12 significant digits.

A percentage computed as ``100 * 291 / 1000`` is 29.099999999999998 in binary floating point;
written as is, it reads like a bug. Twelve significant digits keep every digit a float32 metric
(or a float64 loss) can mean, and drop the representation noise: ``tidy(29.099999999999998)``
is 29.1. Containers are tidied recursively; anything else is returned as is.
"""
from __future__ import annotations

import math
from typing import Any

DIGITS = 12


def tidy(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{DIGITS}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: tidy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [tidy(v) for v in value]
    return value
