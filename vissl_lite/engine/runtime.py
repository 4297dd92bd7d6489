"""Where a run executes: the device, the process group for ``torchrun``, and the batch split.

``Runtime.create(train_cfg)`` picks the device (``train.device``, already validated by
``vissl_lite.config``), starts the process group when ``WORLD_SIZE`` > 1 (NCCL on GPU, gloo on
CPU) and records rank and world size. ``micro_batch_size`` splits the global batch over ranks and
accumulation steps, refusing splits that cannot work before any data is read.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from vissl_lite import distributed as vdist
from vissl_lite.errors import ConfigError
from vissl_lite.shapes import RunShape


def _destroy_process_group() -> None:
    """At interpreter exit, tear down the process group a Trainer created.

    The group lives as long as the process, not as one ``fit()``: under torchrun a destroyed
    default group cannot be created again (the new group reuses the old one's keys in the agent's
    store and connects to dead peers), so a second ``Trainer(...).fit()`` in the same script (a
    sweep, pretraining then a second stage) reuses the first one's group instead.
    """
    if vdist.is_dist():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int
    world: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def create(cls, train_cfg) -> "Runtime":
        want = str(train_cfg.device).lower()
        if want == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu")
        use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
        device = torch.device("cuda", vdist.local_rank()) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not vdist.is_dist():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            atexit.register(_destroy_process_group)
        return cls(device, vdist.rank(), vdist.world_size())


def micro_batch_size(cfg, method: nn.Module, world: int) -> int:
    """Samples per rank per forward pass: ``train.batch_size`` over ranks and accumulation steps."""
    shape = RunShape(cfg.train.batch_size, cfg.train.accumulate, world)
    shape.check_min_batch(cfg.method.name, getattr(method, "min_batch_size", 1))
    micro = shape.per_rank
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in method.modules())
    if has_bn and micro < 2:
        raise ConfigError(
            f"batch norm needs >= 2 samples per rank, but train.batch_size={shape.batch_size} over "
            f"{world} rank(s) and {shape.accumulate} accumulation step(s) gives {micro}; raise "
            f"train.batch_size")
    return micro


def describe_batch(batch_size: int, world: int, accumulate: int) -> str:
    """``world size 2, batch 64 per rank = 128 global`` (``x 2 accumulation steps`` when set)."""
    per_rank = batch_size // (world * accumulate)
    steps = f" x {accumulate} accumulation steps" if accumulate > 1 else ""
    return f"world size {world}, batch {per_rank} per rank{steps} = {batch_size} global"
