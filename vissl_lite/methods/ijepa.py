"""I-JEPA: joint-embedding predictive architecture (Assran et al., "Self-Supervised Learning from
Images with a Joint-Embedding Predictive Architecture", CVPR 2023).

One view per image (crop only). From its patch grid, sample ``num_targets`` target blocks
(scale 0.15-0.2, aspect 0.75-1.5) and one large context block (scale 0.85-1.0) from which the
target patches are removed, so context and targets never overlap:

    context, targets = block_masks(B, grid)
    with no_grad:  h = layer_norm(target_encoder.forward_tokens(x))   # EMA encoder, full image
    z = context_encoder.forward_tokens(x, context)                    # the trained ViT
    for t in targets:  loss += D(predictor(z, context, t), h[t])      # D = smooth-L1 (or L2)
    target_encoder <- m * target_encoder + (1 - m) * context_encoder, m: 0.996 -> 1.0 linearly

The predictor is a narrow ViT: context tokens projected to ``predictor_dim`` plus their fixed
sin-cos positions, and one mask token per target patch carrying that patch's position; its
outputs at the mask tokens are projected back to the encoder width. All target blocks are
predicted in one batched pass (context repeated per target), as in the official code.

For evaluation, ``backbone_for_eval`` returns the *target* (EMA) encoder, as the paper evaluates
it; its pooled features are the average of its patch tokens (``backbone.global_pool=avg``) or the
CLS token. ``self.backbone`` is the context encoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.masks import BlockMasks, BlockMaskSampler
from vissl_lite.augment.spec import ViewSpec
from vissl_lite.errors import ConfigError
from vissl_lite.methods.ema import ema_update, teacher_copy
from vissl_lite.schedules import cosine_schedule, linear_schedule
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.vit_blocks import TransformerStack, fixed_pos_embed, gather_tokens
from vissl_lite.registry import METHODS

LOSSES = ("smooth_l1", "l2")
SCHEDULES = {"linear": linear_schedule, "cosine": cosine_schedule}


class JEPAPredictor(nn.Module):
    """Context tokens + position-embedded mask tokens -> predicted target tokens (encoder width)."""

    def __init__(self, embed_dim: int, grid_size: Sequence[int], dim: int = 384, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, init_std: float = 0.02):
        super().__init__()
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", fixed_pos_embed(dim, grid_size), persistent=False)
        self.transformer = TransformerStack(dim, depth, num_heads, mlp_ratio)
        self.proj = nn.Linear(dim, embed_dim)
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        """As the official I-JEPA: truncated-normal(0.02) linear layers and mask token, zero
        biases, and residual output weights scaled by 1/sqrt(2 * layer)."""
        nn.init.trunc_normal_(self.mask_token, std=std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.transformer.rescale_residual_init()

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor,
                target_idx: torch.Tensor) -> torch.Tensor:
        """``context`` (B, Kc, D) at ``context_idx`` (B, Kc); ``target_idx`` (R*B, Kt) for R target
        blocks stacked along the batch -> predictions (R*B, Kt, D)."""
        repeats = target_idx.shape[0] // context.shape[0]
        z = self.embed(context)
        pos = self.pos_embed.to(z.dtype).expand(z.shape[0], -1, -1)
        z = (z + gather_tokens(pos, context_idx)).repeat(repeats, 1, 1)
        queries = self.mask_token.to(z.dtype) + gather_tokens(pos.repeat(repeats, 1, 1), target_idx)
        out = self.transformer(torch.cat([z, queries], dim=1))
        return self.proj(out[:, z.shape[1]:])


@METHODS.register("ijepa", help="I-JEPA: predict EMA-encoder tokens of target blocks from a context block")
class IJEPA(Method):
    """I-JEPA (Assran et al. 2023); see the module docstring for the algorithm."""

    @dataclass
    class Config:
        name: str = "ijepa"
        predictor_dim: int = 384          # paper (ViT-H/14): 384-d, 12 blocks
        predictor_depth: int = 12
        predictor_heads: int = 12
        num_targets: int = 4
        target_scale: List[float] = field(default_factory=lambda: [0.15, 0.2])
        target_aspect: List[float] = field(default_factory=lambda: [0.75, 1.5])
        context_scale: List[float] = field(default_factory=lambda: [0.85, 1.0])
        min_keep: int = 10                # fewest context patches a sample may keep
        momentum_start: float = 0.996     # EMA of the target encoder
        momentum_end: float = 1.0
        momentum_schedule: str = "linear"  # linear (paper) | cosine (BYOL/DINO)
        loss: str = "smooth_l1"           # smooth_l1 (paper) | l2

    views = ViewSpec("ijepa", 1, 0)
    supported_backbones = ("vit",)
    min_batch_size = 1
    tiny_config = {"predictor_dim": 32, "predictor_depth": 1, "predictor_heads": 2}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        cfg = self.cfg
        _check_config(cfg)
        self.grid_size = tuple(int(g) for g in backbone.grid_size)
        self.predictor = JEPAPredictor(backbone.embed_dim, self.grid_size, dim=cfg.predictor_dim,
                                       depth=cfg.predictor_depth, num_heads=cfg.predictor_heads)
        self.target_encoder = teacher_copy(backbone).eval()
        self.momentum = float(cfg.momentum_start)
        # the logged momentum lives on the device so that the compiled step never sees a new
        # Python constant (which would recompile it at every step)
        self.register_buffer("ema_momentum", torch.tensor(self.momentum), persistent=False)
        self.mask_sampler = BlockMaskSampler(
            self.grid_size, num_targets=cfg.num_targets, target_scale=tuple(cfg.target_scale),
            target_aspect=tuple(cfg.target_aspect), context_scale=tuple(cfg.context_scale),
            min_keep=cfg.min_keep)

    def train(self, mode: bool = True) -> "IJEPA":
        super().train(mode)
        self.target_encoder.eval()  # the EMA encoder is never trained (teacher_copy: no drop-path)
        return self

    def sample_masks(self, batch: int, device: torch.device,
                     generator: Optional[torch.Generator] = None) -> BlockMasks:
        """Context and target blocks, disjoint per sample; unpacks as
        ``context_idx (B, Kc), [target_idx (B, Kt)] * num_targets`` with Kc and Kt fixed for
        the run (``BlockMaskSampler``: the paper's per-batch minimum, derived from the config)."""
        return self.mask_sampler(batch, device, generator)

    @torch.no_grad()
    def target_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Layer-normalised (no affine) patch tokens of the EMA encoder on the full image (B, N, D)."""
        h = self.target_encoder.forward_tokens(images)
        return F.layer_norm(h, h.shape[-1:])

    def predict(self, images: torch.Tensor, context_idx: torch.Tensor,
                target_idx: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predictions and targets for every target block, flattened to (tokens, D) each, plus
        the context encoder's tokens (B, Kc, D)."""
        h = self.target_tokens(images)
        z = self.backbone.forward_tokens(images, context_idx)
        if len({t.shape for t in target_idx}) == 1:
            stacked = torch.cat(list(target_idx), dim=0)
            preds = self.predictor(z, context_idx, stacked)
            targets = gather_tokens(h.repeat(len(target_idx), 1, 1), stacked)
        else:  # blocks of different sizes cannot share one batched pass
            preds = torch.cat([self.predictor(z, context_idx, t).flatten(0, 1) for t in target_idx])
            targets = torch.cat([gather_tokens(h, t).flatten(0, 1) for t in target_idx])
        return preds.reshape(-1, h.shape[-1]), targets.reshape(-1, h.shape[-1]), z

    def prediction_loss(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.cfg.loss == "smooth_l1":
            return F.smooth_l1_loss(preds.float(), targets.float())
        return F.mse_loss(preds.float(), targets.float())

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        images = batch["views"][0]
        context_idx, target_idx = self.sample_masks(images.shape[0], images.device)
        preds, targets, z = self.predict(images, context_idx, target_idx)
        loss = self.prediction_loss(preds, targets)
        return StepOutput(loss=loss, metrics={"pred_loss": loss.detach(),
                                              "ema_momentum": self.ema_momentum.clone()},
                          embedding=z.detach().mean(dim=1))

    def momentum_at(self, step: int, total_steps: int) -> float:
        schedule = SCHEDULES[self.cfg.momentum_schedule]
        return schedule(step, total_steps, self.cfg.momentum_start, self.cfg.momentum_end)

    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA update of the target encoder: theta_t <- m * theta_t + (1 - m) * theta_context."""
        self.momentum = self.momentum_at(step, total_steps)
        ema_update(self.target_encoder, self.backbone, self.momentum)
        self.ema_momentum.fill_(self.momentum)

    def backbone_for_eval(self) -> nn.Module:
        """The EMA target encoder, as evaluated in the paper."""
        return self.target_encoder


def _check_config(cfg: Any) -> None:
    if cfg.loss not in LOSSES:
        raise ConfigError(f"method.loss={cfg.loss!r} is not one of {LOSSES}")
    if cfg.momentum_schedule not in SCHEDULES:
        raise ConfigError(f"method.momentum_schedule={cfg.momentum_schedule!r} is not one of "
                          f"{tuple(SCHEDULES)}")
    if not 0.0 <= cfg.momentum_start <= cfg.momentum_end <= 1.0:
        raise ConfigError(f"need 0 <= method.momentum_start <= method.momentum_end <= 1, got "
                          f"{cfg.momentum_start} and {cfg.momentum_end}")
    if cfg.num_targets < 1:
        raise ConfigError(f"method.num_targets must be >= 1, got {cfg.num_targets}")
    if cfg.predictor_dim % cfg.predictor_heads:
        raise ConfigError(f"method.predictor_dim={cfg.predictor_dim} is not divisible by "
                          f"method.predictor_heads={cfg.predictor_heads}")
    for key, upper in (("target_scale", 1.0), ("context_scale", 1.0), ("target_aspect", math.inf)):
        lo, hi = getattr(cfg, key)
        if not 0 < lo <= hi <= upper:
            raise ConfigError(f"method.{key}={list(getattr(cfg, key))} must be a [min, max] range "
                              f"with 0 < min <= max <= {upper}")
