"""MAE: masked autoencoders (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022).

One lightly augmented view per image; a random 75 % of its patches are hidden:

    keep, masked = random_patch_mask(B, N, mask_ratio)      # per-sample random subset of patches
    z      = encoder.forward_tokens(x, keep)                # the ViT sees the visible patches only
    pred   = decoder(z, keep)                               # + mask tokens, fixed sin-cos positions
    target = patchify(x)                                    # (B, N, p*p*3)
    if norm_pix_loss: target = (target - mean) / sqrt(var + 1e-6)   # per patch
    loss   = mean over masked patches of mean((pred - target) ** 2)

Targets are the pixels of the *normalised* view the augmentation pipeline hands over, as in the
official code (it normalises with the ImageNet mean/std before the model; nothing is
un-normalised). With ``norm_pix_loss`` (the paper's default) each patch is standardised anyway;
without it, reconstructions are in normalised-pixel units (``benchmarks/masked_visualize.py``
maps them back to RGB with the view's mean/std).

Differences from the official code: the backbone zoo's ``forward_tokens`` returns patch tokens
only, so the decoder sees no CLS token (it carries no information the patches lack); the
encoder's positions are whatever the backbone uses (learned or sin-cos), the decoder's are fixed
2-D sin-cos as in the paper. For evaluation the encoder is the backbone itself, pooled as
``backbone.global_pool`` says (average of patch tokens or CLS).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from vissl_lite.augment.masks import random_patch_mask
from vissl_lite.augment.spec import ViewSpec
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.vit_blocks import TransformerStack, fixed_pos_embed
from vissl_lite.registry import METHODS


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches in row-major grid order, pixels as (row, col, channel)."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, p*p*C) -> (B, C, gh*p, gw*p)."""
    b, n, d = patches.shape
    gh, gw = grid_size
    p = patch_size
    c = d // (p * p)
    if n != gh * gw or c * p * p != d:
        raise ValueError(f"{n} patches of {d} values do not fit a {gh}x{gw} grid of {p}x{p} patches")
    x = patches.reshape(b, gh, gw, p, p, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, gh * p, gw * p)


class MAEDecoder(nn.Module):
    """Lightweight decoder: visible tokens + mask tokens at their grid positions -> pixels per patch."""

    def __init__(self, embed_dim: int, grid_size: Sequence[int], patch_size: int, dim: int = 512,
                 depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0, in_chans: int = 3):
        super().__init__()
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", fixed_pos_embed(dim, grid_size), persistent=False)
        self.transformer = TransformerStack(dim, depth, num_heads, mlp_ratio)
        self.pred = nn.Linear(dim, patch_size * patch_size * in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        """As the official MAE: xavier-uniform linear layers, zero biases, N(0, 0.02) mask token."""
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, visible: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        """``visible`` (B, K, D_enc) at grid positions ``keep_idx`` (B, K) -> (B, N, p*p*C)."""
        z = self.embed(visible)
        b, _, d = z.shape
        n = self.pos_embed.shape[1]
        tokens = self.mask_token.to(z.dtype).expand(b, n, d)
        tokens = tokens.scatter(1, keep_idx.unsqueeze(-1).expand(-1, -1, d), z)
        return self.pred(self.transformer(tokens + self.pos_embed.to(z.dtype)))


@METHODS.register("mae", help="Masked autoencoder: ViT on visible patches, pixel reconstruction")
class MAE(Method):
    """Masked autoencoder (He et al. 2022); see the module docstring for the algorithm."""

    @dataclass
    class Config:
        name: str = "mae"
        mask_ratio: float = 0.75
        norm_pix_loss: bool = True        # per-patch standardised pixel targets
        decoder_dim: int = 512            # paper: 512-d, 8 blocks, 16 heads (for ViT-B/L/H)
        decoder_depth: int = 8
        decoder_heads: int = 16
        decoder_mlp_ratio: float = 4.0

    views = ViewSpec("mae", 1, 0)
    supported_backbones = ("vit",)
    min_batch_size = 1
    tiny_config = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        cfg = self.cfg
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ConfigError(f"method.mask_ratio must be in (0, 1), got {cfg.mask_ratio} "
                              f"(the paper uses 0.75)")
        if cfg.decoder_dim % cfg.decoder_heads:
            raise ConfigError(f"method.decoder_dim={cfg.decoder_dim} is not divisible by "
                              f"method.decoder_heads={cfg.decoder_heads}")
        self.patch_size = int(backbone.patch_size)
        self.grid_size = tuple(int(g) for g in backbone.grid_size)
        self.num_patches = int(backbone.num_patches)
        # the step reads plain Python attributes, not the config object (one graph under compile)
        self.mask_ratio, self.norm_pix_loss = float(cfg.mask_ratio), bool(cfg.norm_pix_loss)
        self.decoder = MAEDecoder(backbone.embed_dim, self.grid_size, self.patch_size,
                                  dim=cfg.decoder_dim, depth=cfg.decoder_depth,
                                  num_heads=cfg.decoder_heads, mlp_ratio=cfg.decoder_mlp_ratio)

    def patch_targets(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction targets (B, N, p*p*3): patches of ``images``, standardised if norm_pix_loss."""
        target = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def reconstruction_loss(self, pred: torch.Tensor, images: torch.Tensor,
                            mask_idx: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the masked patches only; ``pred`` is (B, N, p*p*3)."""
        target = self.patch_targets(images)
        idx = mask_idx.unsqueeze(-1).expand(-1, -1, target.shape[-1])
        err = torch.gather(pred.float(), 1, idx) - torch.gather(target.float(), 1, idx)
        return err.pow(2).mean()

    def _encode_decode(self, images: torch.Tensor, generator: Optional[torch.Generator]):
        keep_idx, mask_idx = random_patch_mask(images.shape[0], self.num_patches,
                                               self.mask_ratio, images.device, generator)
        latent = self.backbone.forward_tokens(images, keep_idx)
        return latent, self.decoder(latent, keep_idx), keep_idx, mask_idx

    def reconstruct(self, images: torch.Tensor, generator: Optional[torch.Generator] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mask, encode, decode: returns (pred (B, N, p*p*3), keep_idx (B, K), mask_idx (B, M))."""
        _, pred, keep_idx, mask_idx = self._encode_decode(images, generator)
        return pred, keep_idx, mask_idx

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        images = batch["views"][0]
        latent, pred, _, mask_idx = self._encode_decode(images, None)
        loss = self.reconstruction_loss(pred, images, mask_idx)
        return StepOutput(loss=loss, metrics={"recon_loss": loss.detach()},
                          embedding=latent.detach().mean(dim=1))
