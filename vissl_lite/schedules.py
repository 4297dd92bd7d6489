"""Per-step schedule formulas: linear warmup then cosine decay (learning rate, weight decay, EMA momentum).

The formulas are the ones of the DINO and BYOL code bases, written as plain functions of the step so
that a method can import them (``cosine_schedule`` for its teacher momentum) and a resumed run gets
the same value at the same step without any saved scheduler state:

    warmup (step < W):   v = v_start + (v_base - v_start) * step / W
    cosine (step >= W):  v = v_end + (v_base - v_end) * (1 + cos(pi * (step - W) / (T - W))) / 2

They sit at the bottom of the import graph (methods and the engine both use them); the engine's
``ParamScheduler`` applies them to an optimizer.
"""
from __future__ import annotations

import math


def linear_schedule(step: float, total: float, start: float, end: float) -> float:
    """Straight line from ``start`` (step 0) to ``end`` (step ``total``), constant afterwards."""
    if total <= 0:
        return end
    t = min(max(step / total, 0.0), 1.0)
    return start + (end - start) * t


def cosine_schedule(step: float, total: float, start: float, end: float) -> float:
    """Half cosine from ``start`` (step 0) to ``end`` (step ``total``), constant afterwards.

    With ``start=0.996, end=1.0`` this is the BYOL/DINO teacher momentum schedule.
    """
    if total <= 0:
        return end
    t = min(max(step / total, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_cosine_schedule(step: float, total: float, warmup: float, base: float, end: float,
                           warmup_start: float = 0.0) -> float:
    """Linear warmup from ``warmup_start`` to ``base`` over ``warmup`` steps, then cosine to ``end``."""
    if warmup > 0 and step < warmup:
        return linear_schedule(step, warmup, warmup_start, base)
    return cosine_schedule(step - warmup, total - warmup, base, end)
