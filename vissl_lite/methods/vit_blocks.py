"""Small transformer pieces shared by the masked methods: the MAE decoder and the I-JEPA predictor.

Both run a narrow stack of standard pre-norm ViT blocks (timm's ``Block``, so attention uses
PyTorch's fused scaled-dot-product kernel) over a sequence in which some tokens come from the
encoder and the others are a learned mask token plus a *fixed* 2-D sin-cos position embedding
(He et al. 2022, Sec. 3; Assran et al. 2023, Sec. 3). Token subsets are always index tensors
into the row-major patch grid, as produced by ``vissl_lite.augment.masks``.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import torch
from torch import nn
from timm.models.vision_transformer import Block

from vissl_lite.backbones.pos_embed import sincos_2d_pos_embed


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick tokens per sample: ``x`` (B, N, D), ``idx`` (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def fixed_pos_embed(dim: int, grid_size: Sequence[int]) -> torch.Tensor:
    """The (1, N, dim) 2-D sin-cos table of the patch grid (no CLS row), as a float tensor."""
    table = torch.as_tensor(sincos_2d_pos_embed(dim, tuple(grid_size), cls_token=False),
                            dtype=torch.float32)
    return table.reshape(1, -1, dim)


class TransformerStack(nn.Module):
    """``depth`` pre-norm ViT blocks followed by a final LayerNorm (MAE / I-JEPA settings:
    qkv bias, MLP ratio 4, LayerNorm eps 1e-6)."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"transformer width {dim} is not divisible by its {num_heads} heads; "
                             f"pick a number of heads that divides the width")
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm)
            for _ in range(depth))
        self.norm = norm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    @torch.no_grad()
    def rescale_residual_init(self) -> None:
        """Divide each block's residual-branch output weights by sqrt(2 * layer) (I-JEPA init)."""
        for layer, block in enumerate(self.blocks, start=1):
            block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))
