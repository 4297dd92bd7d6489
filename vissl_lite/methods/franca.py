"""Franca: nested Matryoshka clustering (Venkataramanan et al. 2025, arXiv:2507.14137;
valeoai/Franca ``franca/layers/mrl_dino_head.py``, ``franca/loss/mrl_*.py``,
``franca/train/ssl_meta_arch.py``, ``rasa/src/rasa_head.py``).

DINOv2-style training (``vissl_lite.methods.dinov2``: EMA teacher, 2 global + local crops, masked
global crops for the patch loss, KoLeo, Sinkhorn-Knopp teacher targets) whose DINO and iBOT heads
are nested: for an encoder width D and L levels, level i works on d_i = D / 2^(L-1-i)
(official: D/16, D/8, D/4, D/2, D) and clusters into K_i = K * d_i / D prototypes, so coarse
levels have few prototypes and the finest has K:

    head_i(x) = W_i MLP_i(P_i x)          P_i: D -> d_i linear, MLP_i: d_i -> hidden -> bottleneck
                                           (GELU after every layer, the last too), W_i: bottleneck
                                           -> K_i weight-normalised (g trained), no L2 norm
    dino  = sum_i mean over crop pairs (k, v != k) of CE(SK(head_i,t(cls_t(x_k)) / tau_t),
                                                        head_i,s(cls_s(x_v)) / tau_s)
    ibot  = sum_i mean over masked patches of CE(SK(head'_i,t(patch_t)), head'_i,s(patch_s))
    loss  = w_dino * dino + w_ibot * ibot + w_koleo * koleo + rasa

Each level's targets are balanced by their own Sinkhorn-Knopp over the global batch (Franca
trains with ``centering: sinkhorn_knopp``; a mean-centred teacher is not defined per level).

RASA (removal of absolute spatial attributes; ``rasa_head.py``): R rounds of a bias-free linear
map u_j: D -> 2 with a sigmoid predict each patch's normalised (row, col) from the teacher's patch
tokens, and round j sees the tokens with the planes of rounds < j projected out:

    loss_j = mse(sigmoid(U_j z_j), (r / (H - 1), c / (W - 1))),    z_0 = teacher patch tokens
    z_{j+1} = z_j - <z_j, e_r> e_r - <z_j, e_c> e_c    (e_r, e_c: Gram-Schmidt basis of U_j's rows)
    rasa = sum_j loss_j                               (gradient into U_j only)

``rasa_tokens(images)`` gives the teacher's patch tokens with every plane removed (for dense
use). Official RASA trains the rounds one after another on a frozen Franca backbone (9 rounds of
5 epochs); here all rounds train at once beside pretraining on the teacher's detached tokens,
each on what the earlier rounds (their weights detached) leave.

Differences from the official code: uniformly random masks at one ratio (``random_patch_mask``,
fixed count; Franca: CyclicMask, inverse blocks rolled, ratio 0.1-0.5 on half the crops) and one
bottleneck width for both heads (Franca's ViT-B: DINO 384, iBOT 256).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.masks import random_patch_mask
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import StepOutput
from vissl_lite.methods.dinov2 import DINOv2, cross_entropy_pairs, ibot_patch_loss, koleo_loss
from vissl_lite.methods.heads import WeightNormLinear
from vissl_lite.methods.vit_blocks import gather_tokens
from vissl_lite.registry import METHODS


def nesting_dims(dim: int, levels: int) -> Tuple[int, ...]:
    """Franca's nesting list for ``levels`` levels: D / 2^(levels - 1), ..., D / 2, D."""
    return tuple(dim // 2 ** (levels - 1 - i) for i in range(levels))


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> nn.Module:
    """``_build_mlp`` of mrl_dino_head.py: linear layers, each followed by GELU, the last too."""
    if num_layers == 1:
        return nn.Linear(in_dim, out_dim)
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    layers = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.GELU()]
    return nn.Sequential(*layers)


class MatryoshkaHead(nn.Module):
    """Franca's ``MRLDINOHead``: one projection, MLP and prototype layer per nesting level; the
    forward pass returns one (..., K_i) logit tensor per level, coarsest first."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, num_layers: int = 3, norm_last_layer: bool = False,
                 levels: int = 5):
        super().__init__()
        dims = nesting_dims(in_dim, levels)
        if dims[0] < 1:
            raise ConfigError(f"{levels} nesting levels halve the width {in_dim} below 1; lower "
                              f"method.nesting_levels")
        self.projections = nn.ModuleList(nn.Linear(in_dim, d) for d in dims)
        self.mlps = nn.ModuleList(_mlp(d, hidden_dim, bottleneck_dim, num_layers) for d in dims)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.ModuleList(
            WeightNormLinear(bottleneck_dim, int(out_dim * d / dims[-1]), freeze_g=norm_last_layer)
            for d in dims)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(last(mlp(proj(x))) for proj, mlp, last
                     in zip(self.projections, self.mlps, self.last_layer))


def remove_plane(x: torch.Tensor, weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``decompose_pos_2D``: (x's projection on the plane of ``weight``'s two rows, the rest)."""
    u_r = weight[0] / weight[0].norm()
    u_c = weight[1] / weight[1].norm()
    u_c = u_c - torch.dot(u_c, u_r) * u_r
    u_c = u_c / u_c.norm()
    pos = (x @ u_r)[..., None] * u_r + (x @ u_c)[..., None] * u_c
    return pos, x - pos


class RASAHead(nn.Module):
    """``rounds`` position predictors, each on the tokens the earlier ones' planes leave."""

    def __init__(self, dim: int, grid_size: Tuple[int, int], rounds: int = 9):
        super().__init__()
        self.pos_pred = nn.ModuleList(nn.Linear(dim, 2, bias=False) for _ in range(rounds))
        gh, gw = grid_size
        rows, cols = torch.meshgrid(torch.arange(gh) / max(gh - 1, 1),
                                    torch.arange(gw) / max(gw - 1, 1), indexing="ij")
        self.register_buffer("grid", torch.stack([rows.flatten(), cols.flatten()], -1).float(),
                             persistent=False)                          # (N, 2)

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Sum over rounds of the mean squared error of the predicted positions (B, N, 2)."""
        x = tokens.detach().float()
        total = x.new_zeros(())
        for layer in self.pos_pred:
            pred = torch.sigmoid(layer(x))
            total = total + F.mse_loss(pred, self.grid.expand_as(pred))
            x = remove_plane(x, layer.weight.detach())[1]
        return total

    @torch.no_grad()
    def remove(self, tokens: torch.Tensor) -> torch.Tensor:
        for layer in self.pos_pred:
            tokens = remove_plane(tokens, layer.weight.to(tokens.dtype))[1]
        return tokens


@METHODS.register("franca", help="Franca: DINOv2-style with nested Matryoshka clustering heads and RASA position removal (Venkataramanan et al. 2025)")
class Franca(DINOv2):
    """Franca (arXiv:2507.14137); see the module docstring."""

    @dataclass
    class Config(DINOv2.Config):
        name: str = "franca"
        out_dim: int = 131072             # finest level's prototypes (Franca ViT-B/L: 131072)
        patch_out_dim: int = 131072
        bottleneck_dim: int = 384         # Franca ViT-B: 384 (DINO head)
        centering: str = "sinkhorn_knopp"
        nesting_levels: int = 5           # D/16 ... D
        rasa_rounds: int = 9              # RASA's end_pos_layers
        rasa_loss_weight: float = 1.0
        momentum_teacher: float = 0.994   # Franca ViT-B
        layer_decay: float = 1.0

    tiny_config = {**DINOv2.tiny_config, "nesting_levels": 2, "rasa_rounds": 2}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        if c.centering != "sinkhorn_knopp":
            raise ConfigError(f"method.centering={c.centering!r}: Franca's nested heads take "
                              f"Sinkhorn-Knopp targets per level; set it to sinkhorn_knopp")
        if c.rasa_rounds < 0 or 2 * c.rasa_rounds >= backbone.embed_dim:
            raise ConfigError(f"method.rasa_rounds={c.rasa_rounds} must lie in [0, "
                              f"{backbone.embed_dim // 2}) for a {backbone.embed_dim}-d encoder")
        self.rasa = RASAHead(backbone.embed_dim, backbone.grid_size, c.rasa_rounds)

    @property
    def head_class(self) -> Callable[..., nn.Module]:
        return partial(MatryoshkaHead, levels=self.cfg.nesting_levels)

    def rasa_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's patch tokens (B, N, D) with RASA's position planes projected out."""
        with torch.no_grad():
            return self.rasa.remove(self.teacher_backbone.forward_tokens(images))

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        crops, c = batch["views"], self.cfg
        glob = torch.cat(list(crops[:2]))
        temp = self.current_teacher_temp
        masks = random_patch_mask(glob.shape[0], self.backbone.num_patches, c.mask_ratio,
                                  glob.device)
        prefix = self.backbone.num_prefix_tokens
        with torch.no_grad():
            t_tokens = self.teacher_backbone.forward_all_tokens(glob)
            t_patches = t_tokens[:, prefix:]
            t_cls = [self.teacher_probs(t, None, temp) for t in self.teacher_head(t_tokens[:, 0])]
            t_patch = [self.teacher_probs(t.flatten(0, 1), None, temp) for t in
                       self.teacher_patch_head(gather_tokens(t_patches, masks.mask_idx))]

        s_tokens = self.backbone.forward_all_tokens(glob, masks.mask, self.mask_token)
        s_cls = s_tokens[:, 0]
        cls_all = [s_cls]
        if len(crops) > 2:
            cls_all.append(self.backbone.forward_all_tokens(torch.cat(list(crops[2:])))[:, 0])
        s_levels = self.head(torch.cat(cls_all))
        dino = sum(cross_entropy_pairs(s.chunk(len(crops)), t.chunk(2), c.student_temp)
                   for s, t in zip(s_levels, t_cls))
        s_patch = self.patch_head(gather_tokens(s_tokens[:, prefix:], masks.mask_idx))
        ibot = sum(ibot_patch_loss(s, t.view_as(s), c.student_temp)
                   for s, t in zip(s_patch, t_patch))
        koleo = sum(koleo_loss(x) for x in s_cls.chunk(2))
        rasa = self.rasa.loss(t_patches)
        loss = (c.dino_loss_weight * dino + c.ibot_loss_weight * ibot
                + c.koleo_loss_weight * koleo + c.rasa_loss_weight * rasa)
        return StepOutput(loss, {"dino_loss": dino.detach(), "ibot_loss": ibot.detach(),
                                 "koleo_loss": koleo.detach(), "rasa_loss": rasa.detach(),
                                 "teacher_temp": temp.clone()})
