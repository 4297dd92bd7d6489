"""One optimizer step, and the read-back of its numbers.

    for each of `accumulate` micro-batches:  loss = model(batch).loss; backward(loss / accumulate)
    unscale (fp16) -> method.on_before_optimizer_step -> grad norm (clip if train.grad_clip, in
    the blocks of train.grad_clip_mode: vissl_lite.engine.clip)
    -> [train.skip_nonfinite: finite check] -> optimizer step -> method.on_step_end

``model`` is the ``Method`` wrapped in DDP (and ``torch.compile``), so ``model(batch)`` runs
``Method.training_step``; nothing here names a method. Micro-batches before the last run under
DDP's ``no_sync`` so gradients are all-reduced once per step.

The step never waits for the device (see DESIGN.md, "The step on a GPU"): the loss, gradient norm,
stop flag, checkpoint-clock flag and tensor metrics are packed into one device tensor (all-reduced under DDP) and read
back later, for several steps at once, by ``read_back``. Two exceptions, both opt-in or
inherent: ``train.skip_nonfinite=true`` reads the loss and gradient norm back in every step (it
must decide before the optimizer step), and fp16's ``GradScaler`` reads its inf flag unless the
optimizer is fused. Metrics a method gives as Python floats are averaged on the host (they are
not all-reduced; they are expected to be the same on every rank, e.g. a schedule's value).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from vissl_lite.data.loader import move_batch
from vissl_lite.engine.clip import clip_blocks, clip_gradients
from vissl_lite.engine.clock import CheckpointClock
from vissl_lite.engine.schedules import ParamScheduler
from vissl_lite.engine.stop import StopSignal

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class PendingStep:
    """A step whose numbers are still on the device."""

    step: int                              # 0-based
    packed: torch.Tensor                   # [loss, grad_norm, stop, clock, *tensor metrics]
    keys: List[str]                        # names of the tensor metrics in ``packed``
    values: Dict[str, float]               # host numbers: lr, wd, Python-float metrics
    skipped: bool = False                  # non-finite and not applied (train.skip_nonfinite)


@dataclass
class StepNumbers:
    """A step's numbers on the host, after ``read_back``."""

    step: int
    loss: float
    grad_norm: float
    stop: bool
    values: Dict[str, float] = field(default_factory=dict)
    skipped: bool = False
    checkpoint_due: bool = False           # checkpoint.every_minutes passed (clock.py)

    def finite(self, scaled: bool) -> bool:
        """fp16 overflows in the gradient are normal: the GradScaler skips the step and rescales."""
        return math.isfinite(self.loss) and (scaled or math.isfinite(self.grad_norm))


def read_back(pending: List[PendingStep]) -> List[StepNumbers]:
    """The numbers of ``pending`` steps, in one device-to-host transfer."""
    if not pending:
        return []
    flat = torch.cat([p.packed for p in pending]).tolist()
    out, start = [], 0
    for p in pending:
        row = flat[start:start + 4 + len(p.keys)]
        start += len(row)
        values = {**p.values, **dict(zip(p.keys, row[4:]))}
        out.append(StepNumbers(p.step, row[0], row[1], row[2] > 0, values, p.skipped,
                               row[3] > 0))
    return out


class StepRunner:
    """Runs optimizer steps of ``method`` (through ``model``) with the train config's settings.

    ``online_head``, when given, is trained on the detached ``StepOutput.embedding`` and the batch
    labels after each forward pass; its numbers are logged with the step's. ``clock`` asks for
    time-based checkpoints (``checkpoint.every_minutes``; none without it).
    """

    def __init__(self, method: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: ParamScheduler, scaler: Optional[torch.amp.GradScaler], train_cfg,
                 device: torch.device, world: int, total_steps: int, stop: StopSignal,
                 online_head: Optional[nn.Module] = None, clock: Optional[CheckpointClock] = None):
        self.method, self.model, self.optimizer = method, model, optimizer
        self.clock = clock if clock is not None else CheckpointClock(None, device)
        self.scheduler, self.scaler, self.stop = scheduler, scaler, stop
        self.device, self.world, self.total_steps = device, world, total_steps
        self.online_head = online_head
        self.accumulate = int(train_cfg.accumulate)
        self.grad_clip = float(train_cfg.grad_clip or 0.0)
        self.grad_clip_mode = str(train_cfg.grad_clip_mode)
        self._clip_blocks: Optional[List[List[nn.Parameter]]] = None   # built at the first step
        self.skip_nonfinite = bool(train_cfg.skip_nonfinite)
        self.memory_format = (torch.channels_last if train_cfg.channels_last
                              else torch.contiguous_format)
        self.amp_dtype = PRECISIONS[train_cfg.precision]

    def run(self, batches: Iterator, step: int) -> PendingStep:
        values = self.scheduler.step(step)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                  enabled=self.amp_dtype is not None)
        loss_sum = torch.zeros((), device=self.device)
        metrics: Dict[str, torch.Tensor] = {}
        host: Dict[str, float] = {}
        for micro in range(self.accumulate):
            batch = move_batch(next(batches), self.device, self.memory_format)
            last = micro == self.accumulate - 1
            sync = (self.model.no_sync() if self.world > 1 and not last
                    and hasattr(self.model, "no_sync") else contextlib.nullcontext())
            with sync:
                with autocast:
                    out = self.model(batch)
                loss = out.loss.float() / self.accumulate
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += loss.detach()
            numbers = dict(out.metrics)
            if self.online_head is not None and out.embedding is not None:
                numbers.update(self.online_head.step(out.embedding, batch["labels"]))
            for k, v in numbers.items():
                if torch.is_tensor(v):
                    v = v.detach().float().to(self.device) / self.accumulate
                    metrics[k] = metrics[k] + v if k in metrics else v
                else:
                    host[k] = host.get(k, 0.0) + float(v) / self.accumulate
        grad_norm = self._unscale_and_norm(step)
        packed = torch.stack([loss_sum, grad_norm, self.stop.device_flag(),
                              self.clock.device_flag(), *metrics.values()])
        if self.world > 1:
            dist.all_reduce(packed, op=dist.ReduceOp.SUM)
            packed /= self.world
        skipped = self.skip_nonfinite and not self._finite_now(packed)
        if skipped:
            if self.scaler is not None:
                self.scaler.update()
        elif self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.on_step_end(step, self.total_steps)
        return PendingStep(step, packed.detach(), list(metrics), {**values, **host}, skipped)

    def _unscale_and_norm(self, step: int) -> torch.Tensor:
        """The total gradient norm (before clipping); gradients are rescaled only when
        ``train.grad_clip`` is set."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        self.method.on_before_optimizer_step(step)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return torch.zeros((), device=self.device)
        if self._clip_blocks is None:
            every = [p for g in self.optimizer.param_groups for p in g["params"]]
            self._clip_blocks = clip_blocks(self.grad_clip_mode if self.grad_clip > 0 else "global",
                                            self.method, every)
        return clip_gradients(self._clip_blocks, self.grad_clip).to(self.device)

    def _finite_now(self, packed: torch.Tensor) -> bool:
        """Reads the step's loss and gradient norm back now (a sync; train.skip_nonfinite only)."""
        loss, grad_norm = packed[:2].tolist()
        return StepNumbers(-1, loss, grad_norm, False).finite(self.scaler is not None)


def non_finite_message(numbers: StepNumbers, epoch: int, precision: str,
                       last_checkpoint: Optional[Any]) -> str:
    """What went wrong at which (1-based) step, the last good checkpoint, and what to try."""
    what = (f"loss={numbers.loss}" if not math.isfinite(numbers.loss)
            else f"gradient norm={numbers.grad_norm}")
    last = f"{last_checkpoint}" if last_checkpoint is not None else "none written yet"
    cause = {"fp16": "fp16 overflow (use train.precision=bf16 or fp32)",
             "fp32": "a bug in the loss (e.g. log(0) or division by 0)"}.get(
                 precision, "low precision (try train.precision=fp32)")
    return (f"non-finite {what} at step {numbers.step + 1} (epoch {epoch}, "
            f"lr={numbers.values.get('lr', float('nan')):.4g}, precision={precision}); last good "
            f"checkpoint: {last}. Likely causes: a learning rate too high for this batch size "
            f"(lower optim.lr, lengthen optim.warmup_epochs, or set train.grad_clip=1.0), or "
            f"{cause}. Continue from the checkpoint with resume=auto after the change, or set "
            f"train.skip_nonfinite=true to skip such steps.")
