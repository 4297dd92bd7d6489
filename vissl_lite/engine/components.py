"""The typed parts of a training run, built from the experiment config in one place.

``build_components`` turns a validated config (the spec) and the runtime into ``Components``:
the method on its device, the model the step calls (DDP / ``torch.compile`` around the method),
optimizer, schedules, AMP scaler, the training iterator, the online monitor and its linear head.
When resuming, the checkpoint is loaded before the model is wrapped (DDP broadcasts rank 0's
weights when it is built), and the run's ``TrainState`` comes back with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from vissl_lite.config import to_dict
from vissl_lite.data.loader import build_train_loader, train_data_size
from vissl_lite.engine.act_ckpt import apply_activation_checkpointing
from vissl_lite.engine.logger import log
from vissl_lite.engine.optim import build_optimizer, scaled_lr
from vissl_lite.engine.resume import RUNTIME_STREAM, restore
from vissl_lite.engine.runtime import Runtime
from vissl_lite.engine.schedules import ParamScheduler
from vissl_lite.engine.sharding import resolve_strategy, shard_method
from vissl_lite.engine.state import TrainState
from vissl_lite.errors import ConfigError
from vissl_lite.eval.monitor import OnlineLinearHead, OnlineMonitor
from vissl_lite.methods.base import per_rank_buffer_names
from vissl_lite.rng import derive_seed, preserved_rng, seed_everything


@dataclass
class Components:
    runtime: Runtime
    method: nn.Module                       # the Method itself: state, hooks, evaluation
    model: nn.Module                        # what a step calls: method, in DDP / compiled
    optimizer: torch.optim.Optimizer
    scheduler: ParamScheduler
    scaler: Optional[torch.amp.GradScaler]  # fp16 only
    loader: Any                             # CPULoader or DeviceLoader (vissl_lite.data.loader)
    total_steps: int
    steps_per_epoch: int
    config_dict: Dict[str, Any]
    monitor: Optional[OnlineMonitor]        # monitor.every_epochs > 0
    online_head: Optional[OnlineLinearHead]  # monitor.online_linear, trained every step
    strategy: str = "ddp"                   # ddp | fsdp (train.strategy resolved; sharding.py)


def build_components(cfg, runtime: Runtime, method: nn.Module, micro_batch: int,
                     ckpt: Optional[Dict[str, Any]], dataset=None,
                     transform: Optional[Callable] = None) -> Tuple[Components, TrainState]:
    t, device = cfg.train, runtime.device
    loader = build_train_loader(cfg, method.views, runtime.rank, runtime.world, device,
                                batch_size=micro_batch, dataset=dataset, transform=transform)
    steps_per_epoch = len(loader) // t.accumulate
    if steps_per_epoch < 1:
        raise ConfigError(f"one epoch has {len(loader)} batches per rank, fewer than "
                          f"train.accumulate={t.accumulate}; use more data or smaller batches")
    total_steps = t.epochs * steps_per_epoch
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)

    method.to(device)
    if t.channels_last:
        method.to(memory_format=torch.channels_last)
    method = sync_batchnorm(method, runtime, t.sync_bn)
    apply_activation_checkpointing(method, t.activation_checkpointing)
    strategy = resolve_strategy(t.strategy, method, runtime.world)
    if strategy == "fsdp" and runtime.world > 1:   # before the optimizer takes the parameters
        shard_method(method, device, runtime.world, t.precision)
    method.check_data_size(train_data_size(loader))
    method.setup(total_steps, steps_per_epoch)
    method.train()

    lr = scaled_lr(cfg.optim, t.batch_size)
    optimizer = build_optimizer(cfg.optim, method, lr)
    scheduler = ParamScheduler(
        optimizer, total_steps, round(cfg.optim.warmup_epochs * steps_per_epoch), lr,
        min_lr=cfg.optim.min_lr, warmup_start_lr=cfg.optim.warmup_start_lr,
        weight_decay=cfg.optim.weight_decay, weight_decay_end=cfg.optim.weight_decay_end)
    scaler = torch.amp.GradScaler(device.type) if t.precision == "fp16" else None
    monitor = None
    if cfg.monitor.every_epochs and cfg.monitor.every_epochs > 0:
        with preserved_rng():       # building it draws no training randomness
            monitor = OnlineMonitor(cfg, method, device)
    components = Components(runtime, method, method, optimizer, scheduler, scaler, loader,
                            total_steps, steps_per_epoch, to_dict(cfg), monitor,
                            monitor.linear_head if monitor is not None else None, strategy)
    if ckpt is not None:
        state = restore(ckpt, components, cfg)
    else:
        state = TrainState()
        seed_everything(derive_seed(cfg.seed, runtime.rank, RUNTIME_STREAM), cfg.deterministic)
    components.model = _wrap(method, runtime, t, ddp=strategy == "ddp")
    return components, state


def sync_batchnorm(method: nn.Module, runtime: Runtime, enabled: bool) -> nn.Module:
    """BatchNorm -> SyncBatchNorm (``train.sync_bn``) when training runs on several CUDA ranks (as
    MoCo v3's main_moco.py whenever it runs distributed); one process keeps plain BatchNorm, and
    on CPU torch has no SyncBatchNorm (a warning)."""
    if not enabled or runtime.world == 1:
        return method
    if runtime.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(method)
    if runtime.main:
        log.warning("train.sync_bn=true is ignored on CPU (torch's SyncBatchNorm is GPU-only)")
    return method


def _wrap(method: nn.Module, runtime: Runtime, train_cfg, ddp: bool = True) -> nn.Module:
    """DDP (several ranks, unless the method is sharded) and ``torch.compile`` around the method.

    DDP broadcasts rank 0's buffers when it is built and before every forward; the method's
    per-rank buffers (``Method.per_rank_buffers``, e.g. SwAV's queue) go on DDP's ignore list so
    that each rank keeps its own, at the start (a resumed rank's restored queue) and every step.
    ``broadcast_buffers=False`` would also stop the broadcast of BatchNorm's running statistics
    (and is deprecated since torch 2.13), so the ignore list is the narrower tool."""
    model: nn.Module = method
    if runtime.world > 1 and ddp:
        device = runtime.device
        per_rank = per_rank_buffer_names(method)
        if per_rank:
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                method, per_rank)
        model = nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=train_cfg.find_unused_parameters)
    if train_cfg.compile:
        model = torch.compile(model)
    return model
