"""The method-agnostic trainer: DDP, AMP, optimizers, schedules, checkpoints, logging.

``Trainer(cfg).fit()`` pretrains any registered ``Method``; ``load_pretrained(path)`` rebuilds a
trained method from its checkpoint for evaluation. The names below load on first use, so that
``vissl_lite.engine.config`` (the schemas of the optim/train/checkpoint/logger sections) can be
imported by ``vissl_lite.config`` without loading the trainer.
"""
from vissl_lite._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["CheckpointManager", "atomic_save", "load_checkpoint", "load_pretrained"],
                    "vissl_lite.engine.checkpoint"),
    **dict.fromkeys(["CheckpointError", "NonFiniteLossError"], "vissl_lite.errors"),
    "ema_update": "vissl_lite.engine.ema",
    **dict.fromkeys(["LARS", "build_optimizer", "param_groups", "scaled_lr"], "vissl_lite.engine.optim"),
    "seed_everything": "vissl_lite.engine.rng",
    **dict.fromkeys(["ParamScheduler", "cosine_schedule", "linear_schedule",
                     "warmup_cosine_schedule"], "vissl_lite.engine.schedules"),
    "Trainer": "vissl_lite.engine.trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
