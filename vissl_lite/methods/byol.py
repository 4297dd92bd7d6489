"""BYOL: Bootstrap Your Own Latent (Grill et al. 2020, arXiv:2006.07733).

An online network (backbone f, projector g, predictor q) predicts the projection of the other
view made by a target network (f', g'), an exponential moving average of the online one:

    z_1, z_2   = g(f(v_1)), g(f(v_2))                 online projections
    z'_1, z'_2 = g'(f'(v_1)), g'(f'(v_2))             target projections (no gradient)
    l(p, z')   = || p / ||p|| - z' / ||z'|| ||^2 = 2 - 2 cos(p, z')     mean over the batch
    loss       = l(q(z_1), sg(z'_2)) + l(q(z_2), sg(z'_1))                   (eq. 2-3)
    (f', g')  <- tau (f', g') + (1 - tau) (f, g)      tau: cosine from tau_base to 1 (eq. 1)

The two directions are *summed*, as the paper's symmetrised loss L + L~ (averaging them, as some
re-implementations do, halves the gradient and so the effective learning rate). Each view goes
through the networks in its own pass, so batch norm sees one view at a time, as the reference
code. The target's batch-norm statistics come from its own forward passes. No loss term gathers
across ranks (each sample's loss is independent), so DDP's gradient average is the global one.
Evaluation uses the online backbone.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.methods.ema import ema_update
from vissl_lite.schedules import cosine_schedule
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.heads import projection_mlp
from vissl_lite.registry import METHODS


@dataclass
class BYOLConfig:
    name: str = "byol"
    proj_hidden_dim: int = 4096       # paper: 4096 -> 256 projector and predictor
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096
    momentum_tau: float = 0.996       # target EMA momentum at step 0 (paper, ImageNet) ...
    momentum_tau_end: float = 1.0     # ... rising to this on a cosine schedule (= tau: constant)

    def __post_init__(self):
        if not 0.0 <= self.momentum_tau <= self.momentum_tau_end <= 1.0:
            raise ConfigError(f"method.momentum_tau={self.momentum_tau} and momentum_tau_end="
                              f"{self.momentum_tau_end}: need 0 <= tau <= tau_end <= 1")


def byol_loss(p: torch.Tensor, z_target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, sg(z')) averaged over the batch: one direction of BYOL's loss."""
    cos = F.cosine_similarity(p.float(), z_target.detach().float(), dim=-1)
    return (2.0 - 2.0 * cos).mean()


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy whose parameters take no gradient (a momentum / target network)."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@METHODS.register("byol", help="BYOL: predict an EMA target's projection of the other view (Grill et al. 2020)")
class BYOL(Method):
    """BYOL: online backbone + projector + predictor, EMA target backbone + projector."""

    Config = BYOLConfig
    views = ViewSpec("byol", 2, 0)
    min_batch_size = 2
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        self.projector = projection_mlp(backbone.num_features, c.proj_hidden_dim, c.proj_output_dim, 2)
        self.predictor = projection_mlp(c.proj_output_dim, c.pred_hidden_dim, c.proj_output_dim, 2)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        views = batch["views"][:2]
        p = [self.predictor(self.projector(self.backbone(v))) for v in views]
        with torch.no_grad():
            z_t = [self.target_projector(self.target_backbone(v)) for v in views]
        loss = byol_loss(p[0], z_t[1]) + byol_loss(p[1], z_t[0])
        with torch.no_grad():
            cos = F.cosine_similarity(p[0].float(), z_t[1].float(), dim=-1).mean()
        return StepOutput(loss, {"pred_cos": cos})

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """Target EMA after optimizer step ``step`` (0-based), tau on BYOL's cosine schedule."""
        tau = cosine_schedule(step, total_steps, self.cfg.momentum_tau, self.cfg.momentum_tau_end)
        ema_update(self.target_backbone, self.backbone, tau, copy_buffers=False)
        ema_update(self.target_projector, self.projector, tau, copy_buffers=False)
