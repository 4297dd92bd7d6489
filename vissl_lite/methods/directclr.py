"""DirectCLR: contrastive learning without a projector (Jing et al. 2022, arXiv:2110.09348).

The paper shows that SimCLR's projector prevents *dimensional collapse* of the representation by
letting only a low-rank part of it take the contrastive gradient. DirectCLR drops the projector and
applies the contrastive loss directly to a fixed sub-vector of the backbone's representation: its
first d_0 coordinates (the last residual block plays the projector's part):

    r^a, r^b = f(v^a), f(v^b)                    backbone features (N, D), no projector
    z^a, z^b = normalize(r^a[:, :d_0]), normalize(r^b[:, :d_0])
    loss     = InfoNCE(z^a, z^b) at temperature t, over the global batch

Two InfoNCE forms are offered (``method.loss``):
- ``ntxent``: SimCLR's NT-Xent (the other 2N - 2 views are negatives), as lightly's
  ``DirectCLRLoss(loss_dim, temperature)`` (an ``NTXentLoss`` on the truncated features; lightly's
  default t = 0.5);
- ``infonce``: the official ``infoNCE`` (facebookresearch/directclr main.py): the anchors of one
  view against the other view's N embeddings only, t = 0.1, symmetrised:
      loss = 1/2 CE(z^a z^b^T / t, diag) + 1/2 CE(z^b z^a^T / t, diag).

Both gather the embeddings from every rank with gradient; each rank averages over its own anchors,
so DDP's gradient average is the one-process gradient. The evaluation encoder is the whole backbone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import gather_with_grad
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.simclr import local_rows, nt_xent_loss
from vissl_lite.registry import METHODS

LOSSES = ("ntxent", "infonce")


@dataclass
class DirectCLRConfig:
    name: str = "directclr"
    loss_dim: int = 64                # d_0 (lightly's default; the paper's ResNet-50: 360 of 2048)
    temperature: float = 0.5          # lightly's default; the official infoNCE: 0.1
    loss: str = "ntxent"              # ntxent (lightly) | infonce (official, other view only)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(f"method.loss={self.loss!r}: choose one of {', '.join(LOSSES)}")
        if self.loss_dim < 1 or self.temperature <= 0:
            raise ConfigError(f"method.loss_dim={self.loss_dim}, method.temperature="
                              f"{self.temperature}: need loss_dim >= 1 and temperature > 0")


def cross_view_infonce(anchors: torch.Tensor, others: torch.Tensor, temperature: float) -> torch.Tensor:
    """CE of this rank's anchors against the other view of every image of the global batch."""
    a = F.normalize(anchors.float(), dim=1)
    b = gather_with_grad(F.normalize(others.float(), dim=1))
    return F.cross_entropy(a @ b.T / temperature, local_rows(a.shape[0], b.shape[0], a.device))


def directclr_loss(h_a: torch.Tensor, h_b: torch.Tensor, loss_dim: int, temperature: float,
                   loss: str = "ntxent") -> torch.Tensor:
    """The contrastive loss on the first ``loss_dim`` features of each view."""
    z_a, z_b = h_a.flatten(1)[:, :loss_dim], h_b.flatten(1)[:, :loss_dim]
    if loss == "ntxent":
        return nt_xent_loss(z_a, z_b, temperature)
    return 0.5 * (cross_view_infonce(z_a, z_b, temperature)
                  + cross_view_infonce(z_b, z_a, temperature))


@METHODS.register("directclr", help="DirectCLR: InfoNCE on the first d0 backbone features, no projector (Jing et al. 2022)")
class DirectCLR(Method):
    """A backbone alone, contrasted on a fixed sub-vector of its representation."""

    Config = DirectCLRConfig
    views = ViewSpec("simclr", 2, 0)  # the ImageNet preset sets the official BYOL-style views
    min_batch_size = 2
    tiny_config = {"loss_dim": 32}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        if self.cfg.loss_dim > backbone.num_features:
            raise ConfigError(f"method.loss_dim={self.cfg.loss_dim} exceeds the backbone's "
                              f"{backbone.num_features} features; set it to at most that")

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        view_a, view_b = batch["views"][:2]
        h_a, h_b = self.backbone(torch.cat([view_a, view_b])).chunk(2)  # one pass, as lightly's
        c = self.cfg
        loss = directclr_loss(h_a, h_b, c.loss_dim, c.temperature, c.loss)
        with torch.no_grad():
            pos_sim = F.cosine_similarity(h_a[:, :c.loss_dim].float(),
                                          h_b[:, :c.loss_dim].float(), dim=1).mean()
        return StepOutput(loss, {"pos_sim": pos_sim}, embedding=h_a.detach())
