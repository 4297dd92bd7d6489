"""Barlow Twins: redundancy reduction (Zbontar et al. 2021, arXiv:2103.03230).

The cross-correlation matrix between the projections of two views, each standardised per
dimension over the *global* batch, is pushed towards the identity (Algorithm 1 of the paper):

    z_a, z_b = projector(backbone(view_a)), projector(backbone(view_b))     # (N, D) each
    z_a = (z_a - mean(z_a, 0)) / std(z_a, 0)                                # BatchNorm, no affine
    c = z_a.T @ z_b / N                                                     # (D, D)
    loss = sum_i (1 - c_ii)^2 + lambda * sum_{i != j} c_ij^2

The reference code uses SyncBatchNorm and all-reduces ``c``. Here the embeddings themselves are
gathered with gradient (N x D values, fewer than the D x D matrix for D = 8192), so every rank
computes the global loss; DDP's gradient average then equals the single-process gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import gather_with_grad
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.heads import projection_mlp
from vissl_lite.registry import METHODS


@dataclass
class BarlowTwinsConfig:
    name: str = "barlow_twins"
    lambda_offdiag: float = 0.0051    # weight of the off-diagonal (redundancy) terms
    proj_hidden_dim: int = 8192
    proj_output_dim: int = 8192
    proj_layers: int = 3              # paper: 8192-8192-8192; lightly's CIFAR-10: 2048-2048
    scale_loss: float = 1.0           # solo-learn's CIFAR recipe multiplies the loss by 0.1
    bn_eps: float = 1e-5              # as nn.BatchNorm1d


def _standardise(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-dimension batch normalisation without affine parameters (biased variance, as BN)."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambda_offdiag: float = 0.0051,
                      eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins loss over the global batch; ``z_a[i]``, ``z_b[i]`` are two views of sample i."""
    z_a = _standardise(gather_with_grad(z_a.float()), eps)
    z_b = _standardise(gather_with_grad(z_b.float()), eps)
    c = z_a.T @ z_b / z_a.shape[0]
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambda_offdiag * off_diag


@METHODS.register("barlow_twins", help="Barlow Twins: cross-correlation to identity (Zbontar et al. 2021)")
class BarlowTwins(Method):
    """Barlow Twins: backbone + projection MLP, cross-correlation over the global batch."""

    Config = BarlowTwinsConfig
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 32}
    views = ViewSpec("byol", 2, 0)    # the paper uses BYOL's asymmetric augmentations
    min_batch_size = 2

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        self.projector = projection_mlp(backbone.num_features, self.cfg.proj_hidden_dim,
                                        self.cfg.proj_output_dim, self.cfg.proj_layers)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        view_a, view_b = batch["views"][:2]
        h_a = self.backbone(view_a)                       # separate passes: per-view BN, as the paper
        z_a, z_b = self.projector(h_a), self.projector(self.backbone(view_b))
        loss = self.cfg.scale_loss * barlow_twins_loss(z_a, z_b, self.cfg.lambda_offdiag, self.cfg.bn_eps)
        return StepOutput(loss, {}, embedding=h_a.detach())
