"""Schemas of the ``optim``, ``train``, ``checkpoint`` and ``logger`` config sections."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional


@dataclass
class OptimConfig:
    name: str = "sgd"                 # sgd | adamw | lars
    lr: float = 0.1                   # base lr; multiplied by batch_size / lr_batch_base if scale_lr
    scale_lr: bool = False
    lr_batch_base: int = 256
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    warmup_start_lr: float = 0.0
    weight_decay: float = 0.0
    weight_decay_end: Optional[float] = None  # cosine schedule of weight decay (DINO); null = constant
    momentum: float = 0.9
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    lars_eta: float = 0.001           # trust coefficient (0.001 in every official LARS)
    lars_denominator: str = "norm_of_sum"  # norm_of_sum | sum_of_norms (engine/lars.py)
    lars_clip: bool = False           # solo-learn's clip_lr: adapted rate capped at the lr
    exclude_bias_and_norm: bool = True
    exclude_lr_scale: float = 1.0     # lr multiplier of the excluded group (biases, norms)


@dataclass
class TrainConfig:
    epochs: int = 100
    max_steps: Optional[int] = None   # stop after this many optimizer steps (quick runs, tests)
    batch_size: int = 256             # global: split across ranks and accumulation steps
    accumulate: int = 1
    precision: str = "fp32"           # auto | fp32 | bf16 | fp16   (auto: vissl_lite/autoconf.py)
    channels_last: Any = False        # auto | true | false
    compile: Any = False              # auto | true | false
    grad_clip: Optional[float] = None
    grad_clip_mode: str = "global"    # global | per_param (DINO) | per_module (DINOv2)
    sync_bn: bool = False             # SyncBatchNorm across ranks (GPU only)
    find_unused_parameters: bool = False  # DDP: set when some trainable parameters get no grad
    activation_checkpointing: str = "none"  # none | blocks | selective (engine/act_ckpt.py)
    strategy: str = "ddp"             # ddp | fsdp | auto (engine/sharding.py)
    skip_nonfinite: bool = False      # skip non-finite steps instead of stopping (syncs every step)
    max_consecutive_skips: int = 20   # with skip_nonfinite: stop after this many skips in a row
    device: str = "auto"              # auto | cpu | cuda
    reuse_host_memory: Any = "auto"   # auto | true | false: keep freed memory for the next step
    #                                   (CPU training; host_memory.py)
    log_every: int = 10


@dataclass
class CheckpointConfig:
    every_epochs: int = 1
    every_steps: Optional[int] = None
    every_minutes: Optional[float] = 30.0  # also when this much time passed since the last one
    #                                        (null or 0: off); bounds what a crash can lose
    keep_last: int = 2
    save_best: bool = True
    best_metric: str = "knn_top1"     # a monitor metric (maximised); best.pt needs the monitor on


@dataclass
class WandbConfig:
    mode: str = "offline"             # online | offline | disabled
    project: str = "vissl_lite"
    entity: Optional[str] = None


@dataclass
class LoggerConfig:
    progress: bool = True             # a bar on a terminal; else plain lines (console.py)
    progress_every_s: float = 30.0    # not a terminal: a plain progress line at most this often
    wandb: WandbConfig = field(default_factory=WandbConfig)
    plot: bool = True
    tensorboard: bool = False         # also TensorBoard event files in <run>/tensorboard
