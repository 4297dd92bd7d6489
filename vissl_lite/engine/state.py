"""``TrainState``: where a run is (step, epoch, position in the epoch) and what it has measured.

Everything here goes into the checkpoint as plain Python numbers (``weights_only`` loading) and
comes back on resume, so a run continued from a checkpoint counts, averages and picks ``best.pt``
exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass
class TrainState:
    step: int = 0                     # optimizer steps done (the next step is ``step``, 0-based)
    epoch: int = 0                    # epochs completed
    batch_in_epoch: int = 0           # optimizer steps done inside the current epoch
    epoch_loss_sum: float = 0.0       # sum and count of the finite losses of the current epoch
    epoch_loss_count: int = 0
    skipped_steps: int = 0            # non-finite steps skipped (train.skip_nonfinite=true)
    best: Optional[float] = None      # best value of checkpoint.best_metric so far
    metrics: Dict[str, Any] = field(default_factory=dict)   # the last epoch's results

    def to_checkpoint(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint(cls, ckpt: Dict[str, Any]) -> "TrainState":
        """The state stored in a checkpoint; keys an older checkpoint lacks keep their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in ckpt.items() if k in names})

    def add_loss(self, loss: float) -> None:
        self.epoch_loss_sum += loss
        self.epoch_loss_count += 1

    def finish_epoch(self) -> float:
        """Move to the next epoch; returns the mean loss of the one that ended."""
        mean = self.epoch_loss_sum / max(self.epoch_loss_count, 1)
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
        return mean

    def improve_best(self, metric: str, results: Dict[str, Any]) -> bool:
        """Whether ``metric`` (higher is better) in an epoch's ``results`` beats the best so far;
        if so it becomes the best."""
        if metric not in results:
            return False
        value = float(results[metric])
        if not math.isfinite(value) or (self.best is not None and value <= self.best):
            return False
        self.best = value
        return True
