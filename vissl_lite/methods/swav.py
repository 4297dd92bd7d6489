"""SwAV: Swapping Assignments between multiple Views (Caron et al. 2020, arXiv:2006.09882).

Every crop (2 global + N local) goes through the backbone, a projector and L2 normalisation; its
scores against K prototypes c_k (unit vectors) are compared with the *codes* of the other global
crop, computed by Sinkhorn-Knopp over the whole global batch (Sec. 3.1, Algorithm 1):

    z_v = normalize(g(f(x_v)))          s_v = C^T z_v                  (B, K) per crop v
    Q_i = diag(u) exp(s_i / eps) diag(w),  scaled so that rows (prototypes) sum to 1/K and
          columns (samples of the global batch) to 1/B: 3 alternations, eps = 0.05; no gradient
    l(s_v, q_i) = -mean_b sum_k q_i[b, k] log softmax(s_v[b] / T)[k]                T = 0.1
    loss = mean over i in {global crops} of  mean over v != i of  l(s_v, q_i)

Sinkhorn runs on the scores gathered from every rank (the columns of the global batch), so each
rank's codes equal the single-process ones; the cross-entropy is a per-sample mean, so DDP's
gradient average is the global gradient. This is lightly's ``SwaVLoss`` with
``sinkhorn_gather_distributed=True`` (which all-reduces the row and total sums instead).

Options of the reference code:
- queue (``queue_length`` rows over all ranks, ``queue_length // world_size`` per rank): the
  normalised embeddings of the global crops of this rank's past batches, whose scores join the
  Sinkhorn columns (their codes are dropped) from epoch ``epoch_queue_starts`` on. The queue is
  updated at every step from the start with fixed-shape ops, so it is full when it is first used
  (``epoch_queue_starts >= 1``). Each rank queues its own embeddings (the reference keeps one
  queue per process and saves ``queue<rank>.pth``): the queue is a per-rank buffer
  (``per_rank_buffers``), which DDP never broadcasts and a checkpoint keeps for every rank. It
  comes back only on the same number of ranks; on another number it restarts empty and refills
  during one whole epoch before it is used again. ``queue_length`` must be a multiple of the
  global batch per loss (``check_run``; the reference truncates it to one).
- prototypes get no update during the first ``freeze_prototypes_epochs`` epochs (their gradient
  is dropped in ``on_before_optimizer_step``), and are renormalised after every optimizer step.
The epoch is read from the Python step counter ``steps_done`` (kept in the checkpoint's method
state), never from a tensor. Multi-crop views of equal size go through the backbone together.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import gather_no_grad, rank, world_size
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.dino import _forward_by_resolution
from vissl_lite.methods.heads import projection_mlp
from vissl_lite.registry import METHODS
from vissl_lite.shapes import RunShape


@dataclass
class SwAVConfig:
    name: str = "swav"
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128
    num_prototypes: int = 3000
    temperature: float = 0.1
    sinkhorn_iterations: int = 3
    sinkhorn_epsilon: float = 0.05
    num_local_crops: int = 6          # paper: 2 x 224 + 6 x 96
    queue_length: int = 0             # over all ranks; 0 = no queue (reference: 3840 at batch 256)
    epoch_queue_starts: int = 15
    freeze_prototypes_epochs: int = 1

    def __post_init__(self):
        if self.queue_length > 0 and self.epoch_queue_starts < 1:
            raise ConfigError(f"method.epoch_queue_starts={self.epoch_queue_starts}: the queue must "
                              f"fill during at least one epoch before it is used; set it >= 1")
        if self.sinkhorn_iterations < 1 or self.sinkhorn_epsilon <= 0 or self.temperature <= 0:
            raise ConfigError("method.sinkhorn_iterations must be >= 1 and sinkhorn_epsilon, "
                              "temperature > 0")


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, iterations: int = 3, epsilon: float = 0.05) -> torch.Tensor:
    """Codes (B, K) of ``scores`` (B, K): Sinkhorn-Knopp over this process's rows only."""
    q = torch.exp(scores.float() / epsilon).T                  # (K, B)
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * k                    # prototypes: equal mass 1/K
        q /= q.sum(dim=0, keepdim=True) * b                    # samples: mass 1/B
    return (q * b).T


@torch.no_grad()
def global_codes(scores: torch.Tensor, num_own: int, iterations: int, epsilon: float) -> torch.Tensor:
    """Sinkhorn over the rows of every rank; returns the codes of this rank's first ``num_own``."""
    every = gather_no_grad(scores)
    start = rank() * scores.shape[0] if every.shape[0] > scores.shape[0] else 0
    return sinkhorn(every, iterations, epsilon)[start:start + num_own]


def swav_loss(scores: Sequence[torch.Tensor], num_global: int = 2, temperature: float = 0.1,
              iterations: int = 3, epsilon: float = 0.05,
              queue_scores: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """Swapped prediction over crops; ``scores``: one (B, K) tensor per crop, globals first;
    ``queue_scores``: per global crop, the queue's scores added to the Sinkhorn columns."""
    log_p = [F.log_softmax(s.float() / temperature, dim=1) for s in scores]
    total = 0.0
    for i in range(num_global):
        own = scores[i].detach().float()
        columns = own if queue_scores is None else torch.cat([own, queue_scores[i].float()])
        q = global_codes(columns, own.shape[0], iterations, epsilon)
        total = total + sum(-(q * log_p[v]).sum(dim=1).mean()
                            for v in range(len(scores)) if v != i) / (len(scores) - 1)
    return total / num_global


@METHODS.register("swav", help="SwAV: swapped prediction of Sinkhorn codes over multi-crop views (Caron et al. 2020)")
class SwAV(Method):
    """SwAV: backbone + projector + prototypes, codes by Sinkhorn-Knopp on the global batch."""

    Config = SwAVConfig
    min_batch_size = 2
    per_rank_buffers = ("queue",)
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 16, "num_prototypes": 24,
                   "num_local_crops": 2}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        self.views = ViewSpec("simclr", 2, c.num_local_crops)
        self.projector = projection_mlp(backbone.num_features, c.proj_hidden_dim, c.proj_output_dim, 2)
        self.prototypes = nn.Linear(c.proj_output_dim, c.num_prototypes, bias=False)
        self._normalize_prototypes()
        rows = c.queue_length // world_size()
        # not in state_dict (its length depends on the number of ranks): the engine saves it per rank
        self.register_buffer("queue", torch.zeros(2, rows, c.proj_output_dim), persistent=False)
        self.steps_done = 0           # optimizer steps completed (a Python int, never a tensor)
        self.queue_refill_from = -1   # step at which an empty queue restarted (-1: at the start)

    @classmethod
    def check_shape(cls, cfg: SwAVConfig, shape: RunShape) -> None:
        """The queue takes whole batches: ``queue_length`` is 0 or a multiple of the global batch
        per loss (the reference: ``queue_length -= queue_length % (batch_size * world_size)``),
        so each rank's ``queue_length / world`` rows hold whole micro-batches."""
        q, n = cfg.queue_length, shape.per_loss
        if q and q % n:
            fix = f"{q - q % n} or " if q > n else ""
            raise ConfigError(f"method.queue_length={q} must be 0 or a multiple of the global batch "
                              f"per loss, train.batch_size / train.accumulate = {n}; set "
                              f"method.queue_length={fix}0")

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def _epoch(self, step: int) -> int:
        if not self.steps_per_epoch:
            raise RuntimeError("SwAV's schedules are per epoch: call method.setup(total_steps, "
                               "steps_per_epoch) before training (the Trainer does)")
        return step // self.steps_per_epoch

    def _queue_in_use(self) -> bool:
        if self.queue.shape[1] == 0:
            return False
        epoch = self._epoch(self.steps_done)
        refilled = self.queue_refill_from < 0 or epoch > self._epoch(self.queue_refill_from)
        return refilled and epoch >= self.cfg.epoch_queue_starts

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        crops = batch["views"]
        c = self.cfg
        z = F.normalize(_forward_by_resolution(self.backbone, self.projector, crops)[1], dim=1)
        scores = self.prototypes(z).chunk(len(crops))
        z_global = z[: 2 * crops[0].shape[0]].detach().chunk(2)
        queue_scores: Optional[List[torch.Tensor]] = None
        if self._queue_in_use():
            with torch.no_grad():
                queue_scores = [self.prototypes(self.queue[i]) for i in range(2)]
        loss = swav_loss(scores, 2, c.temperature, c.sinkhorn_iterations, c.sinkhorn_epsilon,
                         queue_scores)
        if self.queue.shape[1] > 0:
            self._push_to_queue(z_global)
        return StepOutput(loss, {})

    @torch.no_grad()
    def _push_to_queue(self, z_global: Sequence[torch.Tensor]) -> None:
        b, rows = z_global[0].shape[0], self.queue.shape[1]
        for i in range(2):
            self.queue[i].copy_(torch.cat([z_global[i].to(self.queue.dtype), self.queue[i, : rows - b]]))

    def on_before_optimizer_step(self, step: int) -> None:
        if self.cfg.freeze_prototypes_epochs and self._epoch(step) < self.cfg.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None

    def on_step_end(self, step: int, total_steps: int) -> None:
        self._normalize_prototypes()
        self.steps_done = step + 1

    def extra_state_for_checkpoint(self) -> Dict[str, Any]:
        return {"steps_done": self.steps_done, "queue_refill_from": self.queue_refill_from,
                "world_size": world_size()}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        self.steps_done = int(state.get("steps_done", 0))
        self.queue_refill_from = int(state.get("queue_refill_from", -1))
        if state.get("world_size", world_size()) != world_size():
            self.queue_refill_from = self.steps_done     # the per-rank queues were not restored
        legacy = state.get("queue")                      # before per-rank buffers: rank 0's queue
        if legacy is not None and legacy.shape == self.queue.shape:
            self.queue.copy_(legacy)
