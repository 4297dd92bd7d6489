"""Stopping on a signal: SIGINT (Ctrl-C), SIGTERM (``timeout``, ``scancel``, preemption) or
SIGUSR1 (SLURM ``--signal=USR1@120``) ends the run with a checkpoint at the step in flight, then
exit code ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM, 138 for SIGUSR1), so a job
script can requeue on it. A second Ctrl-C exits at once, without that checkpoint; so does a
Ctrl-C before the first step (``arm``), when there is nothing to keep.

The handler only sets a host-side flag. No step builds a tensor from it: the flag reaches the
device by writing a buffer allocated once (``fill_`` from a Python scalar, no host-to-device copy),
only in the step after the signal arrived. That buffer rides in the tensor of numbers every step
already all-reduces, so under DDP all ranks read the same flag for the same step when those numbers
are read back (log, checkpoint and epoch-end steps) and stop together.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Dict, Optional

import torch

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopSignal:
    """Installs the handlers for the duration of a ``with`` block (main thread only)."""

    def __init__(self, device: torch.device):
        self.received: Optional[int] = None
        self.flag = torch.zeros((), device=device)
        self._written = False
        self._armed = False
        self._previous: Dict[int, object] = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def arm(self) -> None:
        """From now on a first Ctrl-C stops after the step in flight, with a checkpoint."""
        self._armed = True

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and (self.received is not None or not self._armed):
            why = "again" if self.received is not None else "before the first step"
            os.write(2, f"\n[vissl_lite] SIGINT {why}: exiting now, without a checkpoint\n".encode())
            raise SystemExit(128 + signal.SIGINT)
        self.received = signum

    def device_flag(self) -> torch.Tensor:
        """The 0-d device tensor to pack with the step's numbers: 1 once a signal has arrived."""
        if self.received is not None and not self._written:
            self.flag.fill_(1.0)
            self._written = True
        return self.flag

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "signal"

    @property
    def exit_code(self) -> int:
        return 128 + int(self.received if self.received is not None else signal.SIGTERM)
