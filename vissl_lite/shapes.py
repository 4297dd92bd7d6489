"""Shape rules a run's config alone decides, checked when the config is loaded.

How the global batch splits over ranks and accumulation steps, and what each method needs of the
split and of the view sizes (SwAV's queue, W-MSE's whitening sub-batches, CNN-JEPA's mask grid),
is known before any model, data or process group exists. ``check_run_shape`` runs these rules in
``vissl_lite.config.load_config`` (with ``WORLD_SIZE`` from the environment, which torchrun sets
before Python starts), so a wrong value stops the run at once with one line naming the key and
the fix, not at step 0 after the data and the model were built. Each method adds its own rules in
``Method.check_run`` (``vissl_lite/methods/base.py``), reached through the registry's torch-free
stand-in of the method class (``plugin_scan.py``), so loading a config still imports no torch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from vissl_lite.errors import ConfigError
from vissl_lite.registry import METHODS


@dataclass(frozen=True)
class RunShape:
    """The batch split and the view sizes of a run."""

    batch_size: int                    # global batch of one optimizer step (train.batch_size)
    accumulate: int                    # train.accumulate
    world: int                         # number of ranks
    global_size: int = 32              # side of the global views
    local_size: Optional[int] = None   # side of the local views (augment.local_size)

    def __post_init__(self):
        if self.accumulate < 1:
            raise ConfigError(f"train.accumulate must be >= 1, got {self.accumulate}")
        parts = self.world * self.accumulate
        if self.batch_size % parts:
            raise ConfigError(
                f"train.batch_size={self.batch_size} (global) must split evenly over {self.world} "
                f"rank(s) x {self.accumulate} accumulation step(s); use a multiple of {parts}")

    @property
    def per_loss(self) -> int:
        """Samples of one loss computation over all ranks: batch_size / accumulate."""
        return self.batch_size // self.accumulate

    @property
    def per_rank(self) -> int:
        """Samples per rank per forward pass (the micro-batch)."""
        return self.per_loss // self.world

    def check_min_batch(self, method_name: str, need: int) -> None:
        if self.per_loss < need:
            raise ConfigError(
                f"method '{method_name}' needs at least {need} samples per loss computation, but "
                f"train.batch_size / train.accumulate = {self.per_loss}; raise train.batch_size or "
                f"lower train.accumulate")


def env_world_size() -> int:
    """The number of ranks this process will join (torchrun's ``WORLD_SIZE``; 1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_run_shape(cfg, global_size: int, world: Optional[int] = None) -> RunShape:
    """Check the batch split and the method's shape rules of a full experiment config."""
    t = cfg.train
    shape = RunShape(t.batch_size, t.accumulate, env_world_size() if world is None else world,
                     global_size, cfg.augment.local_size)
    check_run = getattr(METHODS.light(cfg.method.name), "check_run", None)
    if check_run is not None:   # a plugin that does not subclass Method has no shape rules
        check_run(cfg.method, shape)
    return shape
