"""CAPI: cluster and predict latent patches (Darcet et al. 2025, arXiv:2502.08769;
facebookresearch/capi ``train_capi.py``, ``model.py``).

One view per image; a fixed number M of its N patches is masked and a random P = int(M * s) of
them (``prediction_subsampling`` s) is predicted. An EMA teacher encodes the full view; an online
clustering of its patch tokens gives the targets; the student encoder sees the visible patches and
a cross-attention predictor guesses each predicted patch's cluster:

    h     = teacher(x)                                       (B, N, D)          no gradient
    l     = W_c normalize(h) + b_c                           (B, N, K)          K prototypes
    q     = SK_pos(l / tau_t)                                positionwise Sinkhorn-Knopp
    clust = mean over (b, n) of -sum_k q * log_softmax(l / tau_c)    trains W_c, b_c only
    z     = student(x_visible)                               (B, N - M, D)
    s     = W_s normalize(predictor(z, visible, predicted))  (B, P, K)          weight-normed W_s
    capi  = mean over (b, p) of -sum_k q[b, p] * log_softmax(s / tau_s)
    loss  = capi + clust
    teacher <- m * teacher + (1 - m) * student

SK_pos balances each patch position on its own (per position n, the mass of every prototype
over the batch is equal, summed over ranks; then each token's assignment is a distribution),
which the paper finds avoids positional collapse; 3 iterations. The two losses share no
parameter (q is detached, the teacher has no gradient), so one optimizer trains both; the
clustering layer's lr is ``clustering_lr_scale`` x the main lr (official: its own AdamW at 5e-4
beside 1e-3, same schedule shape). The momentum m warms up from 1 to ``momentum_teacher`` over
``momentum_warmup_epochs``, then follows a cosine to ``momentum_teacher_end`` (``WarmupThenCosine``).
Evaluation uses the EMA encoder (the paper's reported model).

Differences from the official code: the project's ViT encoder (absolute positions, LayerNorm,
optional CLS token) instead of CAPI's RoPE/RMSNorm ViT with 16 registers, so the predictor's
context is the visible patch tokens only; uniformly random masks (``random_patch_mask``) instead
of inverse-block masks with roll; the clustering layer takes the main optimizer's betas and
weight decay (official: AdamW defaults, decay 0.01); no truncated cosine (truncate_cos 0.8).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.masks import random_patch_mask
from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import all_reduce_mean, gather_no_grad, world_size
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.dinov2 import ibot_patch_loss
from vissl_lite.methods.ema import ema_update, teacher_copy
from vissl_lite.methods.heads import WeightNormLinear
from vissl_lite.methods.rope_predictor import RoPECrossAttentionPredictor
from vissl_lite.methods.vit_blocks import gather_tokens
from vissl_lite.registry import METHODS
from vissl_lite.schedules import warmup_cosine_schedule


@torch.no_grad()
def positionwise_sinkhorn(scores: torch.Tensor, iterations: int = 3,
                          eps: float = 1e-8) -> torch.Tensor:
    """Soft assignments (B, S, K) of ``scores`` (logits / temperature, (B, S, K)): for every
    position s, alternately normalise exp(scores) over the batch (all ranks) and the prototypes.
    The exponent is shifted by its maximum over the global batch, which the first normalisation
    cancels exactly (official ``stable_exp``)."""
    q = scores.float().transpose(0, 1)                                    # (S, B, K)
    shift = gather_no_grad(q.amax(dim=1, keepdim=True)[None]).amax(dim=0)
    q = torch.exp(q - shift)
    for _ in range(iterations):
        q = q / (all_reduce_mean(q.sum(dim=1, keepdim=True)) * world_size() + eps)
        q = q / (q.sum(dim=2, keepdim=True) + eps)
    return q.transpose(0, 1)


class OnlineClustering(nn.Module):
    """The teacher's prototypes: L2-normalised tokens -> linear logits (bias, weights N(0, 1)),
    as the official ``OnlineClustering`` layer."""

    def __init__(self, dim: int, num_clusters: int):
        super().__init__()
        self.layer = nn.Linear(dim, num_clusters)
        nn.init.normal_(self.layer.weight, std=1.0)
        nn.init.zeros_(self.layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(F.normalize(x, dim=-1, eps=1e-7))


class L2NormHead(nn.Module):
    """The student's head: L2-normalised predictions -> weight-normalised prototypes (g trained,
    starting at 1; official ``L2NormLinear``)."""

    def __init__(self, dim: int, num_clusters: int):
        super().__init__()
        self.last_layer = WeightNormLinear(dim, num_clusters, freeze_g=False)
        nn.init.trunc_normal_(self.last_layer.weight_v, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(x, dim=-1))


@METHODS.register("capi", help="CAPI: predict online Sinkhorn clusters of EMA patch tokens at masked patches (Darcet et al. 2025)")
class CAPI(Method):
    """CAPI (arXiv:2502.08769); see the module docstring."""

    @dataclass
    class Config:
        name: str = "capi"
        num_clusters: int = 16384
        predictor_depth: int = 12          # official: 12 cross-attention blocks for a 24-block ViT-L
        predictor_heads: int = 16
        mask_ratio: float = 0.65
        prediction_subsampling: float = 0.05   # fraction of the masked patches predicted
        student_temp: float = 0.12
        teacher_temp: float = 0.06         # Sinkhorn-Knopp target temperature
        clustering_temp: float = 0.12      # the clustering loss's prediction temperature
        sinkhorn_iterations: int = 3
        clustering_lr_scale: float = 0.5   # official: 5e-4 beside the encoder's 1e-3
        patch_embed_lr_mult: float = 0.2
        momentum_teacher: float = 0.999
        momentum_teacher_end: float = 1.0
        momentum_warmup_epochs: int = 0    # m goes from 1.0 down to momentum_teacher first

    views = ViewSpec("mae", 1, 0)
    supported_backbones = ("vit",)
    min_batch_size = 2
    tiny_config = {"num_clusters": 32, "predictor_depth": 1, "predictor_heads": 3,
                   "prediction_subsampling": 0.25}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        n = backbone.num_patches
        self.num_masked = n - int(n * (1 - c.mask_ratio))      # as random_patch_mask counts
        self.num_predicted = int(self.num_masked * c.prediction_subsampling)
        if not 0.0 < c.mask_ratio < 1.0 or not 1 <= self.num_masked < n:
            raise ConfigError(f"method.mask_ratio={c.mask_ratio} masks {self.num_masked} of {n} "
                              f"patches; pick a ratio in (0, 1) (CAPI: 0.65)")
        if not 0.0 < c.prediction_subsampling <= 1.0 or self.num_predicted < 1:
            raise ConfigError(f"method.prediction_subsampling={c.prediction_subsampling} predicts "
                              f"{self.num_predicted} of {self.num_masked} masked patches; raise it "
                              f"to at most 1 (CAPI: 0.05 of 166 on ViT-L/14)")
        if backbone.embed_dim % c.predictor_heads:
            raise ConfigError(f"method.predictor_heads={c.predictor_heads} does not divide the "
                              f"encoder width {backbone.embed_dim}")
        dim = backbone.embed_dim
        self.predictor = RoPECrossAttentionPredictor(dim, backbone.grid_size, c.predictor_depth,
                                                     c.predictor_heads)
        self.head = L2NormHead(dim, c.num_clusters)
        self.clustering = OnlineClustering(dim, c.num_clusters)
        self.teacher_backbone = teacher_copy(backbone)
        self.register_buffer("ema_momentum", torch.tensor(self.momentum_at(0, 1)),
                             persistent=False)

    def train(self, mode: bool = True) -> "CAPI":
        super().train(mode)
        self.teacher_backbone.eval()
        return self

    def param_lr_scale(self, name: str) -> float:
        """The clustering layer's and the patch embedding's lr multipliers (read by the optimizer)."""
        if name.startswith("clustering."):
            return self.cfg.clustering_lr_scale
        if name.startswith("backbone.patch_embed."):
            return self.cfg.patch_embed_lr_mult
        return 1.0

    def sample_masks(self, batch: int, device) -> tuple:
        """Visible indices (B, N - M) and the predicted subset (B, P) of the masked ones."""
        keep_idx, mask_idx = random_patch_mask(batch, self.backbone.num_patches,
                                               self.cfg.mask_ratio, device)
        pick = torch.rand(mask_idx.shape, device=mask_idx.device).argsort(dim=1)
        return keep_idx, torch.gather(mask_idx, 1, pick[:, :self.num_predicted])

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        c = self.cfg
        images = batch["views"][0]
        keep_idx, predict_idx = self.sample_masks(images.shape[0], images.device)
        with torch.no_grad():
            h = self.teacher_backbone.forward_tokens(images)
        logits = self.clustering(h)
        assign = positionwise_sinkhorn(logits.detach() / c.teacher_temp, c.sinkhorn_iterations)
        clustering_loss = ibot_patch_loss(logits, assign, c.clustering_temp)
        targets = gather_tokens(assign, predict_idx)
        z = self.backbone.forward_tokens(images, keep_idx)
        pred = self.head(self.predictor(z, keep_idx, predict_idx))
        capi_loss = ibot_patch_loss(pred, targets, c.student_temp)
        with torch.no_grad():
            entropy = -torch.xlogy(targets, targets).sum(dim=-1).mean()
        return StepOutput(capi_loss + clustering_loss,
                          {"capi_loss": capi_loss.detach(), "clustering_loss": clustering_loss.detach(),
                           "target_entropy": entropy, "ema_momentum": self.ema_momentum.clone()},
                          embedding=h.mean(dim=1))

    def momentum_at(self, step: int, total_steps: int) -> float:
        c = self.cfg
        warmup = c.momentum_warmup_epochs * (self.steps_per_epoch or 0)
        return warmup_cosine_schedule(step, total_steps, warmup, c.momentum_teacher,
                                      c.momentum_teacher_end, warmup_start=1.0)

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        m = self.momentum_at(step, total_steps)
        ema_update(self.teacher_backbone, self.backbone, m)
        self.ema_momentum.fill_(m)

    def backbone_for_eval(self) -> nn.Module:
        return self.teacher_backbone
