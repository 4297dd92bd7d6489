"""The method-agnostic trainer: DDP, AMP, optimizers, schedules, checkpoints, logging.

``Trainer(cfg).fit()`` pretrains any registered ``Method``; ``load_pretrained(path)`` rebuilds a
trained method from its checkpoint for evaluation.
"""
from vissl_lite.engine.checkpoint import (CheckpointError, CheckpointManager, atomic_save,
                                          load_checkpoint, load_pretrained)
from vissl_lite.engine.ema import ema_update
from vissl_lite.engine.optim import LARS, build_optimizer, param_groups, scaled_lr
from vissl_lite.engine.rng import seed_everything
from vissl_lite.engine.schedules import (ParamScheduler, cosine_schedule, linear_schedule,
                                         warmup_cosine_schedule)
from vissl_lite.engine.trainer import NonFiniteLossError, Trainer

__all__ = [
    "Trainer", "NonFiniteLossError", "load_checkpoint", "load_pretrained", "CheckpointError",
    "CheckpointManager", "atomic_save", "LARS", "build_optimizer", "param_groups", "scaled_lr",
    "ParamScheduler", "cosine_schedule", "linear_schedule", "warmup_cosine_schedule",
    "ema_update", "seed_everything",
]
