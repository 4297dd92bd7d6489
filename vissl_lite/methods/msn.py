"""MSN: Masked Siamese Networks (Assran et al., ECCV 2022, arXiv:2204.07141), and PMSN, MSN with
a power-law cluster prior (Assran et al., "The Hidden Uniform Cluster Prior in Self-Supervised
Learning", ICLR 2023, arXiv:2210.07277; lightly's ``PMSNLoss``).

Per image: one target view, one anchor view at the same size and ``V_f`` small focal views. The
anchor and focal views lose a random ``mask_ratio`` of their patches (the ViT sees the rest);
the EMA target encoder sees the whole target view. With ``g`` the projection head, ``P`` the K
trained prototypes, all L2-normalised, and ``p(z) = softmax(z P^T / tau)``:

    a_v  = p(g(cls(student(masked view v))))          v = the anchor and every focal view
    t    = Sinkhorn(sharpen(p(g_t(cls(target(x)))), T))   sharpen(q, T) = q^(1/T) / sum q^(1/T)
    loss = mean over v and b of H(t_b, a_v,b)  +  w * R(mean over b, v and ranks of a_v,b)
    R    = KL(mean || uniform) = sum p log p + log K                  (MSN: mean-entropy max.)
         = KL(prior || mean),  prior_k ~ k^(-s)                           (PMSN: power law)
    target <- m * target + (1 - m) * student,  m: 0.996 -> 1.0 linearly over 1.25x the run

(facebookresearch/msn ``src/losses.py`` and ``src/msn_train.py``: temperature 0.1, T 0.25,
3 Sinkhorn iterations over the global batch, 1024 prototypes of 256 dimensions, me-max weight 1,
and the schedules' horizon of 1.25 x the training iterations.) The encoder for evaluation is
the target encoder (msn's linear_eval.py reads ``target_encoder``). As in msn_train.py, the
target follows the student's train/eval mode (its head's BatchNorm normalises with the target
batch's statistics) and only parameters are averaged.

Differences from the official code: each sample draws its own masked patches (the official drops
one random patch set per view size and batch; lightly's example masks per sample as here).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.masks import random_patch_mask
from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import gather_with_grad
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.dinov2 import sinkhorn_knopp
from vissl_lite.methods.ema import ema_update, teacher_copy
from vissl_lite.registry import METHODS
from vissl_lite.schedules import linear_schedule


def msn_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MSN's 3-layer projection head: Linear-BN-GELU, Linear-BN-GELU, Linear (msn_train.py)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.GELU(),
                         nn.Linear(hidden_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.GELU(),
                         nn.Linear(hidden_dim, out_dim))


def power_law_prior(size: int, exponent: float, device=None) -> torch.Tensor:
    """p_k proportional to k^(-exponent), k = 1..size (PMSN's prior)."""
    k = torch.arange(1, size + 1, device=device, dtype=torch.float32)
    prior = k.pow(-exponent)
    return prior / prior.sum()


def msn_loss(anchors: torch.Tensor, targets: torch.Tensor, prototypes: torch.Tensor,
             temperature: float = 0.1, sharpen_temperature: float = 0.25,
             sinkhorn_iterations: int = 3, reg_weight: float = 1.0,
             prior: Optional[torch.Tensor] = None):
    """(cross-entropy, regulariser) of MSN: ``anchors`` (V*B, D) view-major, ``targets`` (B, D),
    ``prototypes`` (K, D); ``prior`` (K,) replaces the uniform one (PMSN); the regulariser
    comes multiplied by ``reg_weight``."""
    views = anchors.shape[0] // targets.shape[0]
    protos = F.normalize(prototypes.float(), dim=1)
    probs = F.softmax(F.normalize(anchors.float(), dim=1) @ protos.t() / temperature, dim=1)
    with torch.no_grad():
        t = F.softmax(F.normalize(targets.float(), dim=1) @ protos.t() / temperature, dim=1)
        t = t.pow(1.0 / sharpen_temperature)
        t = t / t.sum(dim=1, keepdim=True)
        if sinkhorn_iterations > 0:
            t = sinkhorn_knopp(t.log(), 1.0, sinkhorn_iterations)
        t = t.repeat(views, 1)
    ce = -torch.xlogy(t, probs).sum(dim=1).mean()
    mean_probs = gather_with_grad(probs.mean(dim=0, keepdim=True)).mean(dim=0)
    if prior is None:
        reg = torch.xlogy(mean_probs, mean_probs).sum() + math.log(mean_probs.shape[0])
    else:
        reg = (prior * (prior.log() - mean_probs.log())).sum()
    return ce, reg_weight * reg


@METHODS.register("msn", help="MSN: masked anchor views match an EMA target's prototype assignment, me-max (Assran et al. 2022)")
class MSN(Method):
    """Masked Siamese Networks; see the module docstring for the algorithm."""

    @dataclass
    class Config:
        name: str = "msn"
        proj_hidden_dim: int = 2048
        proj_output_dim: int = 256
        num_prototypes: int = 1024
        temperature: float = 0.1
        sharpen_temperature: float = 0.25
        sinkhorn_iterations: int = 3
        reg_weight: float = 1.0            # me-max (MSN) or prior-matching (PMSN) weight
        mask_ratio: float = 0.15           # patch_drop of the anchor and focal views
        num_focal_views: int = 10
        momentum_start: float = 0.996
        momentum_end: float = 1.0
        schedule_horizon: float = 1.25     # the EMA schedule spans 1.25 x the run (msn_train.py)
        power_law_exponent: float = 0.25   # PMSN only

    supported_backbones = ("vit",)
    min_batch_size = 2
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 16, "num_prototypes": 32,
                   "num_focal_views": 2}
    prior = None

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        if getattr(backbone, "cls_token", None) is None:
            raise ConfigError(f"{c.name} projects the CLS token; set backbone.class_token=true")
        if not 0.0 <= c.mask_ratio < 1.0:
            raise ConfigError(f"method.mask_ratio must be in [0, 1), got {c.mask_ratio}")
        if c.temperature <= 0 or not 0 < c.sharpen_temperature <= 1:
            raise ConfigError(f"need method.temperature > 0 and 0 < method.sharpen_temperature "
                              f"<= 1, got {c.temperature} and {c.sharpen_temperature}")
        self.views = ViewSpec("simclr", 2, c.num_focal_views)
        self.head = msn_head(backbone.embed_dim, c.proj_hidden_dim, c.proj_output_dim)
        bound = 1.0 / math.sqrt(c.proj_output_dim)
        self.prototypes = nn.Parameter(torch.empty(c.num_prototypes, c.proj_output_dim)
                                       .uniform_(-bound, bound))
        self.target_backbone = teacher_copy(backbone)
        self.target_head = teacher_copy(self.head)
        self.momentum = float(c.momentum_start)
        self.register_buffer("ema_momentum", torch.tensor(self.momentum), persistent=False)

    def no_weight_decay(self) -> set:
        """The prototypes are not decayed (msn_train.py init_opt)."""
        return {"prototypes"}

    def encode(self, images: torch.Tensor, mask_ratio: float) -> torch.Tensor:
        """Projected student CLS outputs of ``images`` with ``mask_ratio`` of the patches dropped."""
        vit = self.backbone
        n = (images.shape[-2] // vit.patch_size) * (images.shape[-1] // vit.patch_size)
        keep = random_patch_mask(images.shape[0], n, mask_ratio, images.device).keep_idx
        return self.head(vit.forward_all_tokens(images, keep_idx=keep)[:, 0])

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        c = self.cfg
        target_view, anchor_view, *focal = batch["views"]
        with torch.no_grad():
            targets = self.target_head(self.target_backbone.forward_all_tokens(target_view)[:, 0])
        anchors = [self.encode(anchor_view, c.mask_ratio)]
        if focal:
            anchors.append(self.encode(torch.cat(focal), c.mask_ratio))
        prior = None if self.prior is None else power_law_prior(
            c.num_prototypes, c.power_law_exponent, targets.device)
        ce, reg = msn_loss(torch.cat(anchors), targets, self.prototypes, c.temperature,
                           c.sharpen_temperature, c.sinkhorn_iterations, c.reg_weight, prior)
        return StepOutput(loss=ce + reg, metrics={"ce": ce.detach(), "reg": reg.detach(),
                                                  "ema_momentum": self.ema_momentum.clone()},
                          embedding=anchors[0].detach())

    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA update of the target encoder and head."""
        c = self.cfg
        self.momentum = linear_schedule(step, c.schedule_horizon * total_steps, c.momentum_start,
                                        c.momentum_end)
        ema_update(self.target_backbone, self.backbone, self.momentum, copy_buffers=False)
        ema_update(self.target_head, self.head, self.momentum, copy_buffers=False)
        self.ema_momentum.fill_(self.momentum)

    def backbone_for_eval(self) -> nn.Module:
        """The target encoder, as msn's linear evaluation reads it."""
        return self.target_backbone


@METHODS.register("pmsn", help="PMSN: MSN whose cluster prior is a power law instead of uniform (Assran et al. 2023)")
class PMSN(MSN):
    """MSN with the power-law prior: R = KL(prior || mean anchor probabilities)."""

    @dataclass
    class Config(MSN.Config):
        name: str = "pmsn"

    prior = "power_law"
