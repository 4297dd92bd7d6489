"""SimMIM: a simple framework for masked image modelling (Xie et al., CVPR 2022, arXiv:2111.09886).

One lightly augmented view per image. The image is cut into mask patches of ``mask_patch_size``
pixels (32 at 224 px: 2x2 ViT patches of 16), of which a random ``ceil(R * mask_ratio)`` per image
are masked (R mask patches, ratio 0.6); every ViT patch inside a masked mask patch enters the
encoder as a learned mask token (plus its position embedding), the others as usual:

    m      = upsample(random_mask(B, R, mask_ratio))         # (B, N) bool on the ViT patch grid
    z      = encoder(where(m, mask_token, patch_embed(x)))   # the full sequence, N patch tokens
    pred   = linear(z)                                       # one linear layer: (B, N, p*p*3)
    target = patchify(x)                    # normalised view; per-patch standardised if norm_pix
    loss   = sum over masked pixels |pred - target| / (#masked pixels * 3)     # L1

The official code (microsoft/SimMIM ``models/simmim.py``) decodes with a 1x1 convolution to
``p*p*3`` channels and a ``PixelShuffle(p)``: one linear layer per token, as here (the order of its
outputs inside a patch differs, a permutation of a learned layer). Its loss,
``(l1 * mask).sum() / (mask.sum() + 1e-5) / in_chans``, is the mean absolute error over the
masked pixels, as here (with a fixed number of masked patches; the 1e-5 is dropped). The
official code regresses the normalised view's pixels; ``norm_pix_loss`` (off by default, not in
the official code) standardises each target patch as MAE does.

Differences: no relative position bias and no LayerScale (the project's ViT has absolute
positions); the CLS token, if the backbone has one, enters the encoder but no loss. The
encoder for evaluation is the backbone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from vissl_lite.augment.masks import random_patch_mask
from vissl_lite.augment.spec import ViewSpec
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.mae import patchify
from vissl_lite.registry import METHODS


def coarse_patch_mask(batch: int, grid: Tuple[int, int], scale: int, mask_ratio: float,
                      device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """SimMIM's ``MaskGenerator`` on the device: ``random_patch_mask`` on the coarse grid of mask
    patches (``scale`` x ``scale`` ViT patches each), upsampled to the ViT grid ``grid``; returns
    (B, N) bool, True on masked ViT patches, row-major."""
    gh, gw = grid[0] // scale, grid[1] // scale
    coarse = random_patch_mask(batch, gh * gw, mask_ratio, device, generator).mask
    fine = coarse.view(batch, gh, 1, gw, 1).expand(batch, gh, scale, gw, scale)
    return fine.reshape(batch, grid[0] * grid[1])


@METHODS.register("simmim", help="SimMIM: mask tokens in the full ViT sequence, linear decoder, L1 on masked pixels (Xie et al. 2022)")
class SimMIM(Method):
    """SimMIM (Xie et al. 2022); see the module docstring for the algorithm."""

    @dataclass
    class Config:
        name: str = "simmim"
        mask_ratio: float = 0.6
        mask_patch_size: int = 32         # pixels; a multiple of the ViT patch size
        norm_pix_loss: bool = False       # official: raw (normalised-view) pixels

    views = ViewSpec("mae", 1, 0)
    supported_backbones = ("vit",)
    min_batch_size = 1
    tiny_config = {"mask_patch_size": 8}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        cfg = self.cfg
        self.patch_size = int(backbone.patch_size)
        self.grid_size = tuple(int(g) for g in backbone.grid_size)
        self.num_patches = int(backbone.num_patches)
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ConfigError(f"method.mask_ratio must be in (0, 1), got {cfg.mask_ratio} "
                              f"(the paper uses 0.6)")
        if cfg.mask_patch_size % self.patch_size or any(
                (g * self.patch_size) % cfg.mask_patch_size for g in self.grid_size):
            raise ConfigError(f"method.mask_patch_size={cfg.mask_patch_size} must be a multiple of "
                              f"the ViT patch size {self.patch_size} that divides the image size "
                              f"{self.grid_size[0] * self.patch_size} (SimMIM: 32 at 224 px)")
        self.scale = cfg.mask_patch_size // self.patch_size
        self.mask_ratio, self.norm_pix_loss = float(cfg.mask_ratio), bool(cfg.norm_pix_loss)
        dim = backbone.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        self.decoder = nn.Linear(dim, self.patch_size ** 2 * 3)

    def no_weight_decay(self) -> set:
        """The mask token is not decayed (official ``no_weight_decay``)."""
        return {"mask_token"}

    def sample_mask(self, batch: int, device=None,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(B, N) bool: the ViT patches inside this batch's masked mask patches."""
        return coarse_patch_mask(batch, self.grid_size, self.scale, self.mask_ratio, device,
                                 generator)

    def encode(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, D) of the full sequence, masked patches entered as the mask token."""
        tokens = self.backbone.forward_all_tokens(images, mask, self.mask_token)
        return tokens[:, self.backbone.num_prefix_tokens:]

    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Every patch's predicted pixels (B, N, p*p*3) under ``mask`` (B, N) bool."""
        return self.decoder(self.encode(images, mask))

    def patch_targets(self, images: torch.Tensor) -> torch.Tensor:
        target = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def reconstruction_loss(self, pred: torch.Tensor, images: torch.Tensor,
                            mask: torch.Tensor) -> torch.Tensor:
        """Mean absolute error over the pixels (and channels) of the masked patches."""
        err = (pred.float() - self.patch_targets(images).float()).abs().mean(dim=-1)
        weight = mask.to(err.dtype)
        return (err * weight).sum() / weight.sum()

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        images = batch["views"][0]
        mask = self.sample_mask(images.shape[0], images.device)
        patches = self.encode(images, mask)
        loss = self.reconstruction_loss(self.decoder(patches), images, mask)
        return StepOutput(loss=loss, metrics={"recon_loss": loss.detach()},
                          embedding=patches.detach().mean(dim=1))
