"""NNCLR: Nearest-Neighbor Contrastive Learning (Dwibedi et al. 2021, arXiv:2104.14548).

SimCLR's contrastive loss where each view's positive is replaced by its nearest neighbour in a
support set Q of past projections, so the positives carry semantic variation no augmentation
makes:

    z_1, z_2 = g(f(v_1)), g(f(v_2))           projections (their NN lookup takes no gradient)
    p_1, p_2 = q(z_1), q(z_2)                 predictions
    NN(z)    = argmax_{s in Q} cos(z, s)      nearest neighbour in the support set (no gradient)
    loss     = 1/2 (NT-Xent(NN(z_1), p_2) + NT-Xent(NN(z_2), p_1))
    Q        <- FIFO queue of z_2 (the bank before this step's push answers both lookups)

as lightly's NNCLR (``NNMemoryBankModule`` and ``NTXentLoss``, its CIFAR-10 benchmark model):
NT-Xent over both directions of each pair, negatives gathered from every rank (``simclr.py``).

The support set is per rank (lightly's NNMemoryBankModule does not gather): each rank pushes its
own projections into its own queue, declared in ``per_rank_buffers``: DDP never broadcasts it and
every checkpoint holds each rank's queue and pointer (``engine/resume.py``); each rank
restores its own. The lookup (a matrix product and an argmax) and the push (an ``index_copy_``
at positions computed on the device) read nothing back to the host and compile as one graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.heads import projection_mlp
from vissl_lite.methods.simclr import nt_xent_loss
from vissl_lite.registry import METHODS


@dataclass
class NNCLRConfig:
    name: str = "nnclr"
    temperature: float = 0.1          # paper (lightly's CIFAR-10 benchmark: NTXentLoss() = 0.5)
    queue_size: int = 98304           # support set per rank (paper: 98304)
    proj_hidden_dim: int = 2048       # paper: projector 2048-2048-256, all layers batch-normed
    proj_output_dim: int = 256
    proj_layers: int = 3
    pred_hidden_dim: int = 4096       # paper: predictor 4096-256

    def __post_init__(self):
        if self.queue_size < 1:
            raise ConfigError(f"method.queue_size={self.queue_size}: NNCLR needs a support set")


class NNMemoryBank(nn.Module):
    """A FIFO queue of ``size`` vectors answering nearest-neighbour (cosine) queries.

    Starts as random unit vectors and fills as lightly's ``MemoryBankModule``: a batch is written
    from the pointer on; one that would cross the end is cut there and the pointer returns to 0.
    """

    #: each rank keeps its own queue: never broadcast by DDP, checkpointed per rank
    per_rank_buffers = ("bank", "ptr")

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("bank", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """The bank row most cosine-similar to each row of ``z`` (no gradient)."""
        sim = F.normalize(z.detach().to(self.bank.dtype), dim=1) @ F.normalize(self.bank, dim=1).T
        return self.bank.index_select(0, sim.argmax(dim=1))

    @torch.no_grad()
    def push(self, z: torch.Tensor) -> None:
        size, b = self.bank.shape[0], z.shape[0]
        if b > size:
            raise ConfigError(f"method.queue_size={size} is smaller than the per-rank batch {b}; "
                              f"raise method.queue_size")
        pos = self.ptr + torch.arange(b, device=z.device)
        inside = pos < size
        pos = pos % size                   # rows past the end rewrite what is there (dropped)
        rows = torch.where(inside[:, None], z.to(self.bank.dtype), self.bank.index_select(0, pos))
        self.bank.index_copy_(0, pos, rows)
        end = self.ptr + b
        self.ptr.copy_(end * (end < size))


@METHODS.register("nnclr", help="NNCLR: contrast predictions with nearest neighbours from a support set (Dwibedi et al. 2021)")
class NNCLR(Method):
    """Backbone + projector + predictor, NT-Xent against the support set's nearest neighbours."""

    Config = NNCLRConfig
    views = ViewSpec("simclr", 2, 0)
    min_batch_size = 2
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32,
                   "queue_size": 24}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        self.projector = projection_mlp(backbone.num_features, c.proj_hidden_dim, c.proj_output_dim,
                                        c.proj_layers, last_bn=True)
        self.predictor = projection_mlp(c.proj_output_dim, c.pred_hidden_dim, c.proj_output_dim, 2)
        self.support = NNMemoryBank(c.queue_size, c.proj_output_dim)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        views = batch["views"][:2]
        h = [self.backbone(v) for v in views]              # per-view passes, as lightly's model
        z = [self.projector(x) for x in h]
        p = [self.predictor(x) for x in z]
        nn_1, nn_2 = self.support.nearest(z[0]), self.support.nearest(z[1])
        self.support.push(z[1].detach())
        t = self.cfg.temperature
        loss = 0.5 * (nt_xent_loss(nn_1, p[1], t) + nt_xent_loss(nn_2, p[0], t))
        with torch.no_grad():
            nn_sim = F.cosine_similarity(z[0].float(), nn_1.float(), dim=1).mean()
        return StepOutput(loss, {"nn_sim": nn_sim}, embedding=h[0].detach())
