"""TiCo: Transformation Invariance and Covariance Contrast (Zhu et al. 2022, arXiv:2206.10698).

An online network (backbone f, projector g) embeds one view, a momentum copy (f', g') the other.
The loss pulls the pair together and pushes each embedding away from the directions a running
covariance matrix already covers (a contrastive term against the memory of past batches, without
negatives):

    z_a = normalize(g(f(v_1))),  z_b = normalize(g'(f'(v_2)))           (N, d), N = global batch
    C_t = beta C_{t-1} + (1 - beta) z_a^T z_a / N                      (no gradient; C_0 = 0)
    loss = 1 - 1/N sum_i <z_a_i, z_b_i>  +  rho / N sum_i z_a_i^T C_t z_a_i
    (f', g') <- m (f', g') + (1 - m) (f, g),   m: cosine from momentum_tau to 1

as lightly's ``TiCoLoss`` and its ImageNet benchmark model (benchmarks/imagenet/resnet50/tico.py:
the online network sees the first view, the momentum network the second, one direction).

The embeddings are gathered from every rank with gradient, so every rank computes the global loss
and the same C (a buffer equal on every rank by construction, kept in state_dict); DDP's gradient
average is then the one-process gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import gather_with_grad
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.byol import frozen_copy
from vissl_lite.methods.ema import ema_update
from vissl_lite.methods.heads import projection_mlp
from vissl_lite.registry import METHODS
from vissl_lite.schedules import cosine_schedule


@dataclass
class TiCoConfig:
    name: str = "tico"
    beta: float = 0.9                 # covariance memory (lightly's benchmark; paper: 0.9)
    rho: float = 8.0                  # weight of the covariance contrast (lightly's benchmark)
    proj_hidden_dim: int = 4096       # TiCoProjectionHead: Linear-BN-ReLU-Linear, 4096 -> 256
    proj_output_dim: int = 256
    momentum_tau: float = 0.99        # momentum network: cosine from 0.99 to 1 (lightly)
    momentum_tau_end: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.beta < 1.0:
            raise ConfigError(f"method.beta={self.beta}: the covariance memory needs 0 <= beta < 1")
        if not 0.0 <= self.momentum_tau <= self.momentum_tau_end <= 1.0:
            raise ConfigError(f"method.momentum_tau={self.momentum_tau} and momentum_tau_end="
                              f"{self.momentum_tau_end}: need 0 <= tau <= tau_end <= 1")


def tico_loss(z_a: torch.Tensor, z_b: torch.Tensor, cov: torch.Tensor, beta: float = 0.9,
              rho: float = 8.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """TiCo's loss over the global batch and the updated covariance memory C_t."""
    z_a = F.normalize(gather_with_grad(z_a.float()), dim=1)
    z_b = F.normalize(gather_with_grad(z_b.float()), dim=1)
    cov = beta * cov + (1.0 - beta) * (z_a.T @ z_a).detach() / z_a.shape[0]
    invariance = 1.0 - (z_a * z_b).sum(dim=1).mean()
    contrast = rho * ((z_a @ cov) * z_a).sum(dim=1).mean()
    return invariance + contrast, cov


@METHODS.register("tico", help="TiCo: invariance + contrast against a running covariance (Zhu et al. 2022)")
class TiCo(Method):
    """Online backbone + projector on view 1, momentum copies on view 2, covariance memory C."""

    Config = TiCoConfig
    views = ViewSpec("byol", 2, 0)    # lightly's TiCoTransform: BYOL's asymmetric views
    min_batch_size = 2
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 16}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        self.projector = projection_mlp(backbone.num_features, c.proj_hidden_dim, c.proj_output_dim, 2)
        self.momentum_backbone = frozen_copy(backbone)
        self.momentum_projector = frozen_copy(self.projector)
        self.register_buffer("cov", torch.zeros(c.proj_output_dim, c.proj_output_dim))

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        view_a, view_b = batch["views"][:2]
        h = self.backbone(view_a)
        z_a = self.projector(h)
        with torch.no_grad():
            z_b = self.momentum_projector(self.momentum_backbone(view_b))
        loss, cov = tico_loss(z_a, z_b, self.cov, self.cfg.beta, self.cfg.rho)
        self.cov.copy_(cov)
        with torch.no_grad():
            invariance = 1.0 - F.cosine_similarity(z_a.float(), z_b.float(), dim=1).mean()
        return StepOutput(loss, {"invariance": invariance}, embedding=h.detach())

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        m = cosine_schedule(step, total_steps, self.cfg.momentum_tau, self.cfg.momentum_tau_end)
        ema_update(self.momentum_backbone, self.backbone, m, copy_buffers=False)
        ema_update(self.momentum_projector, self.projector, m, copy_buffers=False)
