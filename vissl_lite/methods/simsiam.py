"""SimSiam: Exploring Simple Siamese Representation Learning (Chen & He 2021, arXiv:2011.10566).

Two views go through one encoder f (backbone + projector) and a predictor h; each view's
prediction is pulled to the other view's projection, which is held fixed by a stop-gradient
(Algorithm 1 of the paper):

    z_1, z_2 = f(v_1), f(v_2)                 projector ends in BatchNorm (no affine on ImageNet)
    p_1, p_2 = h(z_1), h(z_2)                 predictor: Linear-BN-ReLU-Linear bottleneck
    D(p, z)  = - p / ||p|| . z / ||z||        negative cosine similarity, mean over the batch
    loss     = D(p_1, sg(z_2)) / 2 + D(p_2, sg(z_1)) / 2

No negatives, no momentum encoder: the stop-gradient alone prevents collapse (Sec. 4). Each view
goes through the networks in its own pass (per-view batch norm), as the reference code. Every
sample's loss is independent, so DDP's gradient average is the global one; nothing is gathered.
``z_std`` logs the paper's collapse monitor (Fig. 2): the per-dimension std of z / ||z|| over the
batch, about 1 / sqrt(d) for a healthy output and 0 for a collapsed one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.heads import projection_mlp
from vissl_lite.registry import METHODS


@dataclass
class SimSiamConfig:
    name: str = "simsiam"
    proj_hidden_dim: int = 2048       # paper: 3-layer projector 2048-2048-2048 (CIFAR: 2 layers)
    proj_output_dim: int = 2048
    proj_layers: int = 3
    proj_last_bn_affine: bool = False  # official builder.py: BatchNorm1d(dim, affine=False)
    pred_hidden_dim: int = 512        # the predictor's bottleneck (paper Sec. 3, Table 2)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, sg(z)): minus the cosine similarity of the rows, averaged over the batch."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1, eps=1e-8).mean()


def normalized_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the batch std of z / ||z|| (SimSiam's collapse monitor)."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


@METHODS.register("simsiam", help="SimSiam: predict the other view's projection under a stop-gradient (Chen & He 2021)")
class SimSiam(Method):
    """SimSiam: backbone + projector + predictor, symmetrised negative cosine with stop-gradient."""

    Config = SimSiamConfig
    views = ViewSpec("simclr", 2, 0)  # MoCo v2's augmentation; the preset sets its crop scale
    min_batch_size = 2
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 8}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        self.projector = projection_mlp(backbone.num_features, c.proj_hidden_dim, c.proj_output_dim,
                                        c.proj_layers, last_bn=True,
                                        last_bn_affine=c.proj_last_bn_affine)
        self.predictor = projection_mlp(c.proj_output_dim, c.pred_hidden_dim, c.proj_output_dim, 2)

    def encode(self, views: List[torch.Tensor]):
        """Backbone features, projections and predictions of each view, one pass per view."""
        h = [self.backbone(v) for v in views]
        z = [self.projector(x) for x in h]
        return h, z, [self.predictor(x) for x in z]

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        h, z, p = self.encode(batch["views"][:2])
        loss = 0.5 * (negative_cosine(p[0], z[1]) + negative_cosine(p[1], z[0]))
        return StepOutput(loss, {"z_std": normalized_std(z[0])}, embedding=h[0].detach())
