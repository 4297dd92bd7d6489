"""MMCR: Maximum Manifold Capacity Representations (Yerxa et al. 2023, arXiv:2303.03307).

Each image is seen in k augmented views; their normalised embeddings form the image's "manifold",
summarised by its centroid. The loss spreads the centroids of the N images of the global batch
over as many directions as it can (a large nuclear norm of the centroid matrix = many large
singular values = high manifold capacity), which also pulls the views of each image together
(a centroid of spread-out unit vectors is short):

    z_{i,v} = normalize(g(f(x_{i,v})))                  i = 1..N images, v = 1..k views
    c_i     = 1/k sum_v z_{i,v}                           C = [c_1; ...; c_N]  (N, d)
    loss    = - ||C||_*  +  lambda / N sum_i ||Z_i||_*     Z_i = [z_{i,1}; ...; z_{i,k}]  (k, d)

||.||_* is the nuclear norm (sum of singular values). With a momentum encoder (the official
ImageNet recipe, ``loss_mmcr_momentum.py``) the k views also go through an EMA copy (f', g') and
its normalised outputs join each image's views, so c_i averages 2k vectors (the online and
momentum means, each weighted 1/2); this is lightly's ``MMCRLoss(online, momentum)``, whose local
term Z_i also stacks the 2k vectors (the official one takes the k online ones; lambda = 0 in
both official recipes, so the two agree there). Without it (the official CIFAR/STL recipe) the
centroid is the online views' mean. lightly's ``MMCRLoss`` does not normalise; the paper and its
example do, as here.

The projector is the official one (Barlow Twins' layout): Linear-BN-ReLU blocks and a last Linear,
every Linear without bias. The nuclear norm couples the whole batch, so the embeddings are
gathered from every rank with gradient: every rank computes the global loss and DDP's gradient
average is the one-process gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import gather_no_grad, gather_with_grad
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.byol import frozen_copy
from vissl_lite.methods.ema import ema_update
from vissl_lite.methods.heads import projection_mlp
from vissl_lite.registry import METHODS
from vissl_lite.schedules import cosine_schedule


@dataclass
class MMCRConfig:
    name: str = "mmcr"
    num_views: int = 2                # k views per image (official ImageNet: 2; CIFAR: 40)
    lmbda: float = 0.0                # weight of the local nuclear norms (official default 0)
    proj_hidden_dim: int = 8192       # official ImageNet projector 2048-8192-8192-512, no biases
    proj_output_dim: int = 512
    proj_layers: int = 3
    momentum_encoder: bool = True     # official ImageNet: MMCR_Momentum; CIFAR/STL: none
    momentum_tau: float = 0.99        # official: a constant 0.99 (tau_end = tau)
    momentum_tau_end: float = 0.99

    def __post_init__(self):
        if self.num_views < 2:
            raise ConfigError(f"method.num_views={self.num_views}: MMCR needs >= 2 views per image")
        if self.lmbda < 0:
            raise ConfigError(f"method.lmbda={self.lmbda}: the local term's weight must be >= 0")
        if not 0.0 <= self.momentum_tau <= self.momentum_tau_end <= 1.0:
            raise ConfigError(f"method.momentum_tau={self.momentum_tau} and momentum_tau_end="
                              f"{self.momentum_tau_end}: need 0 <= tau <= tau_end <= 1")


def nuclear_norm(x: torch.Tensor) -> torch.Tensor:
    """Sum of the singular values of each matrix in ``x`` (..., m, n), summed over the batch."""
    return torch.linalg.svdvals(x).sum()


def mmcr_loss(online: torch.Tensor, momentum: Optional[torch.Tensor] = None,
              lmbda: float = 0.0) -> torch.Tensor:
    """MMCR over the global batch; ``online`` and ``momentum`` are (n, k, d), unnormalised."""
    z = gather_with_grad(F.normalize(online.float(), dim=-1))
    if momentum is not None:
        z = torch.cat([z, gather_no_grad(F.normalize(momentum.detach().float(), dim=-1))], dim=1)
    loss = -nuclear_norm(z.mean(dim=1))
    if lmbda:
        loss = loss + lmbda * nuclear_norm(z) / z.shape[0]
    return loss


@METHODS.register("mmcr", help="MMCR: maximise the nuclear norm of the views' centroids (Yerxa et al. 2023)")
class MMCR(Method):
    """Backbone + bias-free projector on k views, optional momentum copies; nuclear-norm loss."""

    Config = MMCRConfig
    min_batch_size = 2
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 16}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        self.views = ViewSpec("simclr", c.num_views, 0)  # presets set BYOL's colour ops on ImageNet
        self.projector = projection_mlp(backbone.num_features, c.proj_hidden_dim, c.proj_output_dim,
                                        c.proj_layers, last_bias=False)
        if c.momentum_encoder:
            self.momentum_backbone = frozen_copy(backbone)
            self.momentum_projector = frozen_copy(self.projector)

    def _views_last(self, z: torch.Tensor, batch: int) -> torch.Tensor:
        """(k * n, d) stacked view by view -> (n, k, d)."""
        return z.reshape(self.cfg.num_views, batch, -1).transpose(0, 1)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        views = batch["views"][: self.cfg.num_views]
        n, x = views[0].shape[0], torch.cat(views)       # one pass: BN over every view, as official
        h = self.backbone(x)
        online = self._views_last(self.projector(h), n)
        momentum = None
        if self.cfg.momentum_encoder:
            with torch.no_grad():
                momentum = self._views_last(self.momentum_projector(self.momentum_backbone(x)), n)
        loss = mmcr_loss(online, momentum, self.cfg.lmbda)
        with torch.no_grad():
            centroid_norm = F.normalize(online.float(), dim=-1).mean(dim=1).norm(dim=1).mean()
        return StepOutput(loss, {"centroid_norm": centroid_norm}, embedding=h[:n].detach())

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        if not self.cfg.momentum_encoder:
            return
        m = cosine_schedule(step, total_steps, self.cfg.momentum_tau, self.cfg.momentum_tau_end)
        ema_update(self.momentum_backbone, self.backbone, m, copy_buffers=False)
        ema_update(self.momentum_projector, self.projector, m, copy_buffers=False)
