"""The method-agnostic trainer: DDP, AMP, optimizers, schedules, checkpoints, logging.

``Trainer(cfg).fit()`` pretrains any registered ``Method``; ``load_pretrained(path)`` rebuilds a
trained method from its checkpoint for evaluation.

The names below are loaded on first use (PEP 562): ``vissl_lite.config`` imports the schema module
``vissl_lite.engine.config`` from the bottom of the import graph, and loading this package must not
pull the trainer (which imports methods, data and eval) in with it. ``seed_everything``,
``ema_update`` and the schedule formulas live lower down (``vissl_lite.rng``,
``vissl_lite.methods.ema``, ``vissl_lite.schedules``) and stay importable from here.
"""
from vissl_lite._lazy import lazy_exports

_EXPORTS = {
    "Trainer": "vissl_lite.engine.trainer",
    "TrainState": "vissl_lite.engine.state",
    "NonFiniteLossError": "vissl_lite.errors",
    "CheckpointError": "vissl_lite.errors",
    "load_checkpoint": "vissl_lite.engine.checkpoint",
    "load_pretrained": "vissl_lite.engine.checkpoint",
    "CheckpointManager": "vissl_lite.engine.checkpoint",
    "atomic_save": "vissl_lite.engine.checkpoint",
    "LARS": "vissl_lite.engine.lars",
    "build_optimizer": "vissl_lite.engine.optim",
    "param_groups": "vissl_lite.engine.optim",
    "scaled_lr": "vissl_lite.engine.optim",
    "ParamScheduler": "vissl_lite.engine.schedules",
    "cosine_schedule": "vissl_lite.schedules",
    "linear_schedule": "vissl_lite.schedules",
    "warmup_cosine_schedule": "vissl_lite.schedules",
    "ema_update": "vissl_lite.methods.ema",
    "seed_everything": "vissl_lite.rng",
    "submit": "vissl_lite.engine.slurm",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
