"""Time-based checkpoints: ``checkpoint.every_minutes`` bounds the work an interruption can lose.

Epoch- and step-based checkpoints depend on how long an epoch takes; a run that is killed (a
crash, SIGKILL, a lost node) loses everything since its last checkpoint, however long that was.
The clock asks for a checkpoint once ``every_minutes`` have passed since the last one.

It is checked on the host at each step (``time.monotonic``, no device work) and asks the way the
stop signal does (``stop.py``): a 0-d device buffer allocated once is set with ``fill_`` from a
Python scalar when the time is up, rides in the tensor of numbers every step already all-reduces,
and is read back with them at the next log, checkpoint or epoch-end step. So under DDP every rank
sees the request for the same step and all save together (a checkpoint gathers every rank's RNG
state: a rank that saved alone would wait forever).
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch


class CheckpointClock:
    """Asks for a checkpoint every ``minutes`` (None or 0: never)."""

    def __init__(self, minutes: Optional[float], device: torch.device,
                 now: Callable[[], float] = time.monotonic):
        self.period = float(minutes) * 60 if minutes else None
        self.flag = torch.zeros((), device=device)
        self._now = now
        self._written = False
        self._due_at = self._next()

    def _next(self) -> float:
        return self._now() + self.period if self.period else float("inf")

    def device_flag(self) -> torch.Tensor:
        """The 0-d device tensor to pack with the step's numbers: 1 once the period has passed."""
        if not self._written and self._now() >= self._due_at:
            self.flag.fill_(1.0)
            self._written = True
        return self.flag

    def restart(self) -> None:
        """A checkpoint was written (for whatever reason): the next is due a period from now."""
        if self._written:
            self.flag.fill_(0.0)
            self._written = False
        self._due_at = self._next()
