"""data2vec 2.0 for images (Baevski et al., "Efficient Self-supervised Learning with Contextualized
Target Representations for Vision, Speech and Language", ICML 2023, arXiv:2212.07525).

An EMA teacher encodes the unmasked view; the student encodes ``C`` (``clone_batch``) differently
masked copies of it, seeing only their visible patches (inverse block masks, 80 % masked), and a
light convolutional decoder fills in the masked positions. With ``f_l`` the output of block
``l``'s feed-forward branch before its residual sum (the official ``ffn_targets``), L blocks:

    y     = LN( 1/K sum_{l > L-K} IN(f_l(teacher(x))) )     IN over the tokens, per channel;
                                                            LN over channels, both without affine
    for each clone c:  z_c = student(x, visible_c)           (CLS + the visible patches)
                       p_c = decoder(scatter(z_c, visible_c) + noise N(0, 0.01^2) elsewhere)
    loss  = 1/M sum_{c, masked i} ||p_c,i - y_i||^2 / sqrt(D)                 M masked tokens
          + w_cls * sum_{b, c} ||cls(z_c) - mean_i y_i||^2 / sqrt(D)
    teacher <- m * teacher + (1 - m) * student,   m: 0.9998 -> 0.99999 linearly, then constant

(fairseq ``examples/data2vec/models/data2vec2.py``: ``make_targets``, ``d2v_loss`` with
``loss_beta=0`` and scale 1/sqrt(D); the criterion sums the losses and the trainer divides the
gradient by the number of masked tokens, so the CLS term, multiplied by that number, stays a
sum over the rank's B * C samples.) The decoder is ``Decoder2d``: ``decoder_layers`` grouped 3x3
convolutions, each followed by a LayerNorm over channels (no affine) and GELU, with a residual
connection where the widths match, then a linear projection back to the encoder width.

Differences from the official code: the project's ViT is pre-norm (data2vec 2.0's blocks are
post-norm), so ``f_l`` is timm's ``mlp(norm2(x))``; every block is averaged over as one encoder
(the official splits off a 2-block "prenet" and averages the top 10 of the other 10, i.e. the
top 10 of 12 as here with ``average_top_k_layers=10``). The student's patch embedding runs once
per clone. Evaluation uses the student encoder (the official fine-tunes the student).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.inverse_block import inverse_block_mask
from vissl_lite.augment.spec import ViewSpec
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.ema import ema_update, teacher_copy
from vissl_lite.methods.vit_blocks import gather_tokens
from vissl_lite.registry import METHODS
from vissl_lite.schedules import linear_schedule


class ConvDecoder(nn.Module):
    """data2vec 2.0's ``Decoder2d`` on the patch grid: (B, N, D) -> (B, N, D)."""

    def __init__(self, embed_dim: int, grid, dim: int, kernel: int, groups: int, layers: int):
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.convs = nn.ModuleList(
            nn.Conv2d(embed_dim if i == 0 else dim, dim, kernel, padding=kernel // 2, groups=groups)
            for i in range(layers))
        self.proj = nn.Linear(dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, *self.grid)
        for conv in self.convs:
            y = conv(x)
            y = F.gelu(F.layer_norm(y.permute(0, 2, 3, 1), y.shape[1:2]).permute(0, 3, 1, 2))
            x = y + x if y.shape[1] == x.shape[1] else y
        return self.proj(x.flatten(2).transpose(1, 2))


def ffn_outputs(vit: nn.Module, images: torch.Tensor) -> List[torch.Tensor]:
    """Each block's feed-forward branch output before the residual sum, patch tokens only:
    ``ls2(mlp(norm2(x)))`` of timm's pre-norm ``Block``, one (B, N, D) tensor per block."""
    x = vit.embed_tokens(images)
    outs = []
    for blk in vit.blocks:
        x = x + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x))))
        f = blk.ls2(blk.mlp(blk.norm2(x)))
        outs.append(f[:, vit.num_prefix_tokens:])
        x = x + blk.drop_path2(f)
    return outs


def average_targets(layers: List[torch.Tensor], top_k: int, instance_norm: bool = True,
                    layer_norm: bool = True) -> torch.Tensor:
    """``make_targets``: the mean of the top ``top_k`` layers, each instance-normed over the
    tokens (per sample and channel), the mean layer-normed over channels; (B, N, D) float."""
    top = [t.float() for t in layers[-top_k:]]
    if instance_norm:
        top = [F.instance_norm(t.transpose(1, 2)).transpose(1, 2) for t in top]
    y = torch.stack(top).mean(dim=0)
    return F.layer_norm(y, y.shape[-1:]) if layer_norm else y


@METHODS.register("data2vec2", help="data2vec 2.0: regress EMA-teacher layer averages at inverse-block-masked patches, conv decoder (Baevski et al. 2022)")
class Data2Vec2(Method):
    """data2vec 2.0 for images; see the module docstring for the algorithm."""

    @dataclass
    class Config:
        name: str = "data2vec2"
        mask_ratio: float = 0.8            # official mask_prob (inverse masks: 20 % visible)
        mask_length: int = 3               # side of the visible blocks, in patches
        mask_prob_adjust: float = 0.07
        clone_batch: int = 16              # masked copies of each image for the student
        average_top_k_layers: int = 10
        instance_norm_target_layer: bool = True
        layer_norm_targets: bool = True
        decoder_dim: int = 768
        decoder_kernel: int = 3
        decoder_groups: int = 16
        decoder_layers: int = 6
        mask_noise_std: float = 0.01
        cls_loss: float = 0.01
        ema_decay: float = 0.9998
        ema_end_decay: float = 0.99999
        ema_anneal_epochs: float = 20.0    # official: 100k updates of 5004 per epoch

    views = ViewSpec("mae", 1, 0)
    supported_backbones = ("vit",)
    min_batch_size = 1
    tiny_config = {"clone_batch": 2, "average_top_k_layers": 1, "decoder_dim": 48,
                   "decoder_groups": 3, "decoder_layers": 2, "mask_length": 2}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        _check_config(c, backbone)
        self.grid_size = tuple(int(g) for g in backbone.grid_size)
        self.decoder = ConvDecoder(backbone.embed_dim, self.grid_size, c.decoder_dim,
                                   c.decoder_kernel, c.decoder_groups, c.decoder_layers)
        self.teacher = teacher_copy(backbone).eval()
        self.momentum = float(c.ema_decay)
        self.register_buffer("ema_momentum", torch.tensor(self.momentum), persistent=False)

    def train(self, mode: bool = True) -> "Data2Vec2":
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's averaged, normalised block outputs at every patch (B, N, D)."""
        c = self.cfg
        return average_targets(ffn_outputs(self.teacher, images), c.average_top_k_layers,
                               c.instance_norm_target_layer, c.layer_norm_targets)

    def student(self, images: torch.Tensor, generator=None):
        """The C clones (repeat_interleave order, as the official) masked and encoded: the mask,
        the CLS outputs (B*C, D) and the decoder's predictions at every patch (B*C, N, D)."""
        c, vit = self.cfg, self.backbone
        clones = images.repeat_interleave(c.clone_batch, dim=0)
        masks = inverse_block_mask(clones.shape[0], self.grid_size, c.mask_ratio, c.mask_length,
                                   c.mask_prob_adjust, clones.device, generator)
        tokens = vit.forward_all_tokens(clones, keep_idx=masks.keep_idx)
        visible = tokens[:, vit.num_prefix_tokens:]
        n, d = masks.mask.shape[1], visible.shape[-1]
        noise = torch.randn(clones.shape[0], n, d, device=visible.device, dtype=visible.dtype,
                            generator=generator) * c.mask_noise_std
        full = noise.scatter(1, masks.keep_idx.unsqueeze(-1).expand(-1, -1, d), visible)
        return masks, tokens[:, 0], self.decoder(full)

    def loss_terms(self, pred: torch.Tensor, cls: torch.Tensor, targets: torch.Tensor,
                   mask_idx: torch.Tensor):
        """(regression, cls) terms of the loss; ``targets`` (B, N, D) for the B images."""
        clone, d = self.cfg.clone_batch, targets.shape[-1]
        y = targets.repeat_interleave(clone, dim=0)
        err = gather_tokens(pred.float(), mask_idx) - gather_tokens(y, mask_idx)
        regression = err.pow(2).sum(dim=-1).mean() / math.sqrt(d)
        cls_target = targets.mean(dim=1).repeat_interleave(clone, dim=0)
        cls_term = (cls.float() - cls_target).pow(2).sum() / math.sqrt(d)
        return regression, self.cfg.cls_loss * cls_term

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        images = batch["views"][0]
        y = self.targets(images)
        masks, cls, pred = self.student(images)
        regression, cls_term = self.loss_terms(pred, cls, y, masks.mask_idx)
        loss = regression + cls_term
        return StepOutput(loss=loss, metrics={"regression": regression.detach(),
                                              "cls_loss": cls_term.detach(),
                                              "target_var": y.flatten(0, 1).std(dim=0).mean(),
                                              "ema_momentum": self.ema_momentum.clone()},
                          embedding=cls.detach()[::self.cfg.clone_batch])

    def momentum_at(self, step: int) -> float:
        anneal = self.cfg.ema_anneal_epochs * max(self.steps_per_epoch or 0, 1)
        return linear_schedule(step, anneal, self.cfg.ema_decay, self.cfg.ema_end_decay)

    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA update of the teacher with the annealed decay."""
        self.momentum = self.momentum_at(step)
        ema_update(self.teacher, self.backbone, self.momentum)
        self.ema_momentum.fill_(self.momentum)


def _check_config(c: Any, backbone: nn.Module) -> None:
    depth = len(backbone.blocks)
    if not 1 <= c.average_top_k_layers <= depth:
        raise ConfigError(f"method.average_top_k_layers={c.average_top_k_layers} must lie in "
                          f"[1, {depth}] (the backbone's blocks)")
    if getattr(backbone, "cls_token", None) is None:
        raise ConfigError("data2vec 2.0 regresses the CLS token; set backbone.class_token=true")
    if c.clone_batch < 1:
        raise ConfigError(f"method.clone_batch must be >= 1, got {c.clone_batch}")
    if c.decoder_kernel % 2 == 0:
        raise ConfigError(f"method.decoder_kernel={c.decoder_kernel} must be odd (same padding)")
    for width, name in ((backbone.embed_dim, "the encoder width"), (c.decoder_dim, "decoder_dim")):
        if width % c.decoder_groups:
            raise ConfigError(f"method.decoder_groups={c.decoder_groups} does not divide {name} "
                              f"{width}")
    if not 0.0 < c.mask_ratio < 1.0:
        raise ConfigError(f"method.mask_ratio must be in (0, 1), got {c.mask_ratio}")
