"""AIM: autoregressive image models (El-Nouby et al., "Scalable Pre-training of Large Autoregressive
Image Models", ICML 2024, arXiv:2401.08541).

One lightly augmented view per image, its N patches read in raster order. Each sample draws a
prefix length K ~ U{1, ..., N-1}; the ViT (no CLS token) attends bidirectionally inside the
prefix and causally after it (prefix-causal attention, Sec. 3), and an MLP head predicts from
the output at position k the pixels of patch k + 1:

    attend(i, j) = j <= i  or  j < K                     (i attends to j)
    z      = ViT_prefix_causal(x, K) + pos         (lightly adds the positions before the head)
    pred_k = head(z_k)                                   Linear, MLP blocks, LayerNorm, Linear
    t_k    = (patch_k - mean) / sqrt(var + 1e-6)         per-patch normalised pixels
    loss   = mean over samples of [ mean over k >= K of mean_d (pred_{k-1} - t_k)^2 ]

(the loss over each image's non-prefix patches only, averaged per image, as the paper's eq. 2;
the first target is patch K, predicted
from the last prefix token). The prefix-causal attention mask and the head are lightly's
``MaskedCausalAttention`` and ``AIMPredictionHead``; lightly's ImageNet benchmark instead
regresses patch k from output k over every patch, which the paper does not, so the loss follows
the paper. AIM's ViT has no CLS token (``backbone.class_token=false`` in the presets); a CLS or
register token, if the backbone has one, counts as part of the prefix (it sees the prefix
patches only, so nothing after the prefix leaks through it). For evaluation the backbone runs
with bidirectional attention, as the paper probes AIM features (with an attention-pooling
probe; here the backbone's own pooling).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from timm.layers import Mlp
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.mae import patchify
from vissl_lite.registry import METHODS


def prefix_causal_mask(prefix_len: torch.Tensor, num: int) -> torch.Tensor:
    """(B, 1, N, N) bool, True where query i may attend to key j: j <= i or j < K_b."""
    pos = torch.arange(num, device=prefix_len.device)
    causal = pos[None, :] <= pos[:, None]
    in_prefix = pos[None, None, :] < prefix_len[:, None, None]
    return (causal[None] | in_prefix).unsqueeze(1)


class AIMHeadBlock(nn.Module):
    """x + MLP(LN(x)), the MLP without biases (lightly's ``AIMPredictionHeadBlock``)."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


def aim_head(in_dim: int, out_dim: int, hidden_dim: int, num_blocks: int,
             mlp_ratio: float = 4.0) -> nn.Sequential:
    """AIM's pixel head: Linear, ``num_blocks`` residual MLP blocks, LayerNorm, Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False),
                         *[AIMHeadBlock(hidden_dim, mlp_ratio) for _ in range(num_blocks)],
                         nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, out_dim, bias=False))


@METHODS.register("aim", help="AIM: prefix-causal ViT predicts the next patch's normalised pixels (El-Nouby et al. 2024)")
class AIM(Method):
    """Autoregressive image model; see the module docstring for the algorithm."""

    @dataclass
    class Config:
        name: str = "aim"
        head_dim: int = 2048               # lightly's AIMPredictionHead defaults
        head_blocks: int = 12
        head_mlp_ratio: float = 4.0
        norm_pix_loss: bool = True

    views = ViewSpec("mae", 1, 0)
    supported_backbones = ("vit",)
    min_batch_size = 1
    tiny_config = {"head_dim": 32, "head_blocks": 1}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        if backbone.num_patches < 2:
            raise ConfigError("AIM needs at least 2 patches per image")
        self.patch_size = int(backbone.patch_size)
        self.num_patches = int(backbone.num_patches)
        self.head = aim_head(backbone.embed_dim, 3 * self.patch_size ** 2, c.head_dim,
                             c.head_blocks, c.head_mlp_ratio)

    def sample_prefix(self, batch: int, device=None,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Prefix lengths K ~ U{1, ..., N-1}, (B,) long, drawn on the device."""
        u = torch.rand(batch, device=device if generator is None else generator.device,
                       generator=generator).to(device)
        return 1 + (u * (self.num_patches - 1)).long().clamp_(max=self.num_patches - 2)

    def predict(self, images: torch.Tensor, prefix_len: torch.Tensor) -> torch.Tensor:
        """Head outputs at every position (B, N, p*p*3) under prefix-causal attention."""
        vit = self.backbone
        p = vit.num_prefix_tokens
        mask = prefix_causal_mask(prefix_len + p, p + self.num_patches)
        x = vit.embed_tokens(images)
        for blk in vit.blocks:
            x = blk(x, attn_mask=mask)
        return self.head(vit.norm(x)[:, p:] + vit.pos_embed_patches().to(x.dtype))

    def next_patch_loss(self, pred: torch.Tensor, images: torch.Tensor,
                        prefix_len: torch.Tensor) -> torch.Tensor:
        """Mean squared error of pred_{k-1} against patch k over each image's non-prefix patches
        k >= K, averaged per image, then over the batch."""
        target = patchify(images, self.patch_size).float()
        if self.cfg.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (
                target.var(-1, keepdim=True) + 1e-6).sqrt()
        err = (pred[:, :-1].float() - target[:, 1:]).pow(2).mean(dim=-1)     # (B, N-1)
        k = torch.arange(1, self.num_patches, device=images.device)
        weight = (k[None, :] >= prefix_len[:, None]).to(err.dtype)
        return ((err * weight).sum(dim=1) / weight.sum(dim=1)).mean()

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        images = batch["views"][0]
        prefix_len = self.sample_prefix(images.shape[0], images.device)
        loss = self.next_patch_loss(self.predict(images, prefix_len), images, prefix_len)
        return StepOutput(loss=loss, metrics={"next_patch_loss": loss.detach()})
