"""MoCo v3 (Chen, Xie & He 2021, arXiv:2104.02057): contrastive learning with a momentum encoder.

A query encoder (backbone f, projector g, predictor h) and a momentum key encoder (f', g', an EMA
of f, g) see two views; each query is contrasted against the keys of the *global* batch
(Algorithm 1 of the paper, facebookresearch/moco-v3 ``contrastive_loss``):

    q_v = normalize(h(g(f(x_v))))     k_v = normalize(g'(f'(x_v)))  (no gradient)   v = 1, 2
    ctr(q, k) = 2T * mean_i -log exp(q_i . k_i / T) / sum_j exp(q_i . k_j / T)
                                                 j over the keys gathered from every rank
    loss = ctr(q_1, k_2) + ctr(q_2, k_1)
    (f', g') <- m (f', g') + (1 - m) (f, g)       m: cosine from 0.99 to 1

The factor 2T makes the gradient scale independent of T. Keys carry no gradient, so they are
gathered without one; each rank averages over its own queries, and DDP's gradient average equals
the global-batch gradient. Heads follow the reference code (``_build_mlp``): Linear layers
without bias (the last one too) followed by BN + ReLU, the projector ending in a BN without
affine parameters (2 layers for ResNets, 3 for ViTs), the predictor 2 layers (ending in that BN
for ViTs only). The reference converts BatchNorm to SyncBatchNorm whenever it runs distributed
(``train.sync_bn`` in the presets) and its AdamW decays every parameter (the ViT preset's
``optim.exclude_bias_and_norm: false``).

ViT recipe (Sec. 4): AdamW, T = 0.2, and a frozen random patch projection
(``freeze_patch_embed``: the patch-embedding layer keeps its random initialisation), which the
paper finds removes the training instability of ViTs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import gather_no_grad, rank
from vissl_lite.methods.ema import ema_update
from vissl_lite.schedules import cosine_schedule
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.byol import frozen_copy
from vissl_lite.methods.heads import projection_mlp
from vissl_lite.registry import METHODS


@dataclass
class MoCoV3Config:
    name: str = "mocov3"
    temperature: float = 1.0          # reference code: 1.0 for ResNet-50, 0.2 for ViTs
    proj_hidden_dim: int = 4096
    proj_output_dim: int = 256
    proj_layers: int = 2              # 2 for ResNets, 3 for ViTs (reference code)
    pred_hidden_dim: int = 4096
    pred_last_bn: bool = False        # True for ViTs (reference code)
    momentum: float = 0.99            # EMA momentum at step 0 ...
    momentum_end: float = 1.0         # ... rising to this on a cosine schedule
    freeze_patch_embed: bool = False  # ViT: keep the random patch projection fixed (Sec. 4.2)

    def __post_init__(self):
        if self.temperature <= 0:
            raise ConfigError(f"method.temperature={self.temperature}: must be > 0")
        if not 0.0 <= self.momentum <= self.momentum_end <= 1.0:
            raise ConfigError(f"method.momentum={self.momentum}, momentum_end={self.momentum_end}: "
                              f"need 0 <= momentum <= momentum_end <= 1")


def mocov3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """2T x InfoNCE of this rank's queries against the keys of every rank (keys: no gradient)."""
    q = F.normalize(q.float(), dim=1)
    k = gather_no_grad(F.normalize(k.detach().float(), dim=1))
    n = q.shape[0]
    logits = q @ k.T / temperature
    labels = torch.arange(n, device=q.device) + (rank() * n if k.shape[0] > n else 0)
    return F.cross_entropy(logits, labels) * (2 * temperature)


@METHODS.register("mocov3", help="MoCo v3: symmetric InfoNCE with a momentum key encoder (Chen et al. 2021)")
class MoCoV3(Method):
    """MoCo v3: query backbone + projector + predictor, momentum key backbone + projector."""

    Config = MoCoV3Config
    views = ViewSpec("byol", 2, 0)    # the paper uses BYOL's augmentations
    min_batch_size = 2
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        if c.freeze_patch_embed:
            patch_embed = getattr(backbone, "patch_embed", None)
            if patch_embed is None:
                raise ConfigError("method.freeze_patch_embed=true needs a ViT backbone (it has no "
                                  "patch_embed); set it to false for ResNets")
            patch_embed.requires_grad_(False)
        self.projector = projection_mlp(backbone.num_features, c.proj_hidden_dim, c.proj_output_dim,
                                        c.proj_layers, last_bn=True, last_bn_affine=False)
        self.predictor = projection_mlp(c.proj_output_dim, c.pred_hidden_dim, c.proj_output_dim, 2,
                                        last_bn=c.pred_last_bn, last_bn_affine=False,
                                        last_bias=False)
        self.momentum_backbone = frozen_copy(backbone)
        self.momentum_projector = frozen_copy(self.projector)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        x1, x2 = batch["views"][:2]
        q1, q2 = (self.predictor(self.projector(self.backbone(x))) for x in (x1, x2))
        with torch.no_grad():
            k1, k2 = (self.momentum_projector(self.momentum_backbone(x)) for x in (x1, x2))
        t = self.cfg.temperature
        loss = mocov3_loss(q1, k2, t) + mocov3_loss(q2, k1, t)
        with torch.no_grad():
            pos = F.cosine_similarity(q1.float(), k2.float(), dim=1).mean()
        return StepOutput(loss, {"pos_sim": pos})

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        m = cosine_schedule(step, total_steps, self.cfg.momentum, self.cfg.momentum_end)
        ema_update(self.momentum_backbone, self.backbone, m, copy_buffers=False)
        ema_update(self.momentum_projector, self.projector, m, copy_buffers=False)
