"""A cross-attention predictor with 2-D rotary positions: CAPI's decoder (Darcet et al. 2025,
arXiv:2502.08769, facebookresearch/capi ``model.py``), laid out as lightly's
``CAPIPredictorTIMM``.

One learned mask token per patch to predict; in every block the queries attend only to the
visible encoder tokens (no self-attention among queries, so each prediction depends on the
context alone and predictions can be sub-sampled freely). Positions enter as rotary embeddings
(RoFormer, arXiv:2104.09864) of the row-major grid indices on queries and keys: a patch subset
needs no position table of its own. The rotary table is timm's ``RotaryEmbeddingCat`` computed
once (a non-persistent buffer), and attention is PyTorch's fused scaled-dot-product kernel.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import RotaryEmbeddingCat, apply_rot_embed_cat
from torch import nn


class RoPECrossAttentionBlock(nn.Module):
    """queries <- queries + proj(attn(rope(q(norm(queries))), rope(k(norm(ctx))), v(norm(ctx))));
    queries <- queries + mlp(norm(queries))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.query_norm = nn.LayerNorm(dim)
        self.context_norm = nn.LayerNorm(dim)
        self.to_query = nn.Linear(dim, dim)
        self.to_key_value = nn.Linear(dim, 2 * dim)
        self.projection = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, queries: torch.Tensor, context: torch.Tensor, query_rope: torch.Tensor,
                context_rope: torch.Tensor) -> torch.Tensor:
        b, nq, d = queries.shape
        nc = context.shape[1]
        q = self.to_query(self.query_norm(queries)).view(b, nq, self.num_heads, self.head_dim)
        kv = self.to_key_value(self.context_norm(context))
        kv = kv.view(b, nc, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = apply_rot_embed_cat(q.transpose(1, 2), query_rope.unsqueeze(1))
        k = apply_rot_embed_cat(kv[0], context_rope.unsqueeze(1))
        out = F.scaled_dot_product_attention(q, k, kv[1]).transpose(1, 2).reshape(b, nq, d)
        queries = queries + self.projection(out)
        return queries + self.mlp(self.mlp_norm(queries))


class RoPECrossAttentionPredictor(nn.Module):
    """Visible tokens (B, Kc, D) at grid indices ``context_idx`` -> predictions (B, Kq, D) at
    grid indices ``query_idx``, through ``depth`` cross-attention blocks and a final LayerNorm."""

    def __init__(self, dim: int, grid_size: Sequence[int], depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"predictor width {dim} is not divisible by its {num_heads} heads; "
                             f"pick a number of heads that divides the width")
        rope = RotaryEmbeddingCat(dim=dim // num_heads, in_pixels=False,
                                  feat_shape=[int(g) for g in grid_size])
        self.register_buffer("rope", rope.get_embed(), persistent=False)   # (N, 2 * head_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(RoPECrossAttentionBlock(dim, num_heads, mlp_ratio)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """As facebookresearch/capi ``_init_weights``: xavier-uniform linear layers, zero biases,
        N(0, 0.02) mask token."""
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor,
                query_idx: torch.Tensor) -> torch.Tensor:
        rope = self.rope.to(context.dtype)
        context_rope, query_rope = rope[context_idx], rope[query_idx]
        queries = self.mask_token.to(context.dtype).expand(context.shape[0], query_idx.shape[1], -1)
        for block in self.blocks:
            queries = block(queries, context, query_rope, context_rope)
        return self.norm(queries)
