"""Fixed 2-D sine-cosine position embeddings (MAE, He et al. 2022; I-JEPA, Assran et al. 2023).

Half of the channels encode the column of a patch and the other half its row, each with the 1-D
transformer encoding of Vaswani et al. (2017): ``[sin(p * w_k), cos(p * w_k)]`` with
``w_k = 1 / 10000 ** (k / (D / 4))`` for ``k = 0 .. D/4 - 1``. The channel layout follows the
official MAE code (column first, then row), so fixed embeddings match theirs value for value.
timm offers only learnable absolute embeddings for its ViT, hence this module.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch


def _as_grid(grid_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(grid_size, int):
        return grid_size, grid_size
    gh, gw = grid_size
    return int(gh), int(gw)


def sincos_1d_pos_embed(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``(len(positions), embed_dim)`` encoding: sines of all frequencies, then cosines."""
    if embed_dim % 2:
        raise ValueError(f"1-D sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000 ** omega
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d_pos_embed(embed_dim: int, grid_size: Union[int, Sequence[int]],
                        cls_token: bool = False) -> torch.Tensor:
    """Fixed embeddings for a ``gh x gw`` patch grid in row-major order, as a float32 tensor of
    shape ``(1, gh * gw, embed_dim)``, or ``(1, 1 + gh * gw, embed_dim)`` with a leading zero row
    for a CLS token when ``cls_token`` is true."""
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos position embeddings need embed_dim divisible by 4, "
                         f"got {embed_dim}")
    gh, gw = _as_grid(grid_size)
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    emb = torch.cat([sincos_1d_pos_embed(embed_dim // 2, cols.flatten()),
                     sincos_1d_pos_embed(embed_dim // 2, rows.flatten())], dim=1)
    if cls_token:
        emb = torch.cat([emb.new_zeros(1, embed_dim), emb], dim=0)
    return emb.to(torch.float32).unsqueeze(0)
