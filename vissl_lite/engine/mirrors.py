"""Where a run's metrics are mirrored besides ``metrics.jsonl``: wandb's files kept in the run
folder, and TensorBoard (``logger.tensorboard=true``).

wandb, even offline, writes its service's debug logs to ``~/.cache/wandb`` and prints a dozen
lines; ``wandb_environment`` points its cache and data folders into ``<run>/wandb/`` and makes it
quiet, unless the user set those variables. TensorBoard uses ``torch.utils.tensorboard`` (the
``tensorboard`` package, an optional dependency: ``pip install vissl_lite[tensorboard]``); event
files go to ``<run>/tensorboard/``, one scalar per logged number, against the step.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional

log = logging.getLogger("vissl_lite")
#: the values this module set, so that a later run in the same process moves them to its folder
_ours: Dict[str, str] = {}


def wandb_environment(run_dir: Path) -> None:
    """wandb's cache (its service's debug logs) and data folders in ``run_dir/wandb``; quiet."""
    for var, value in (("WANDB_CACHE_DIR", str(run_dir / "wandb" / "cache")),
                       ("WANDB_DATA_DIR", str(run_dir / "wandb" / "data")),
                       ("WANDB_SILENT", "true")):
        if os.environ.get(var) in (None, _ours.get(var)):
            os.environ[var] = _ours[var] = value


class TensorBoardMirror:
    """Scalars of every logged record to TensorBoard event files in ``run_dir/tensorboard``."""

    def __init__(self, writer) -> None:
        self.writer = writer

    @classmethod
    def open(cls, run_dir: Path, enabled: bool) -> Optional["TensorBoardMirror"]:
        if not enabled:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("logger.tensorboard=true but the tensorboard package is not installed; "
                        "metrics go to metrics.jsonl only (pip install tensorboard)")
            return None
        return cls(SummaryWriter(log_dir=str(run_dir / "tensorboard")))

    def log(self, record: Dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()
