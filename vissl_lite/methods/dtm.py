"""DTM: dynamic token morphing for masked image modelling (Kim et al. 2024, "Morphing Tokens Draw
Strong Masked Image Models", arXiv:2401.00230; naver-ai/dtm ``engines/engine_for_dtm.py``,
``bm/merge.py``).

MIM targets of neighbouring patches are often spatially inconsistent; DTM aggregates contextually
related tokens before the loss. For each of L morphing levels, k rounds of ToMe's bipartite soft
matching (Bolya et al. 2023) on the *targets* merge r tokens per round (even tokens A, odd B;
each A token's most cosine-similar B token is its edge; the r strongest edges merge), and the
source matrix S (groups x N, 1 where a token belongs to a group) is tracked through the rounds.
Prediction and target are both replaced by their group means, then compared on every token:

    S_l    = morph_source(target, r_l, k_l)                 (no gradient)
    m(x)   = S_l^T (S_l x / |S_l|)                          group mean at every token
    t_l    = standardise(m(target)) per token               (``norm_pix_loss``)
    loss   = mean over l of smooth_l1_beta=2(m(pred), t_l)  over all N tokens

Here the target is MAE's (``vissl_lite.methods.mae``): the view's pixels per patch, predicted by
MAE's encoder on the visible patches and its decoder; the morphing runs on the pixel patches.

Differences from the official code: its main recipe distills a frozen CLIP ViT-B/16's tokens
into a BEiT-style encoder (mask tokens in the encoder), which this project has no weights for, so
DTM sits on the MAE pixel target instead; the official draws the merge count r in [0, n] and the
rounds k in [1, K] at random per step, here both are fixed per level for the run
(``num_merges``, ``matching_iters``) so that every step has the same shapes (one graph).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.errors import ConfigError
from vissl_lite.methods.mae import MAE, patchify
from vissl_lite.registry import METHODS


def _bipartite_merge(metric: torch.Tensor, r: int):
    """ToMe's ``bipartite_soft_matching`` (no protected token): a merge function for tensors
    laid out as ``metric`` (B, T, C) that merges r of the T // 2 even tokens into odd ones."""
    metric = F.normalize(metric.float(), dim=-1)
    a, b = metric[:, ::2], metric[:, 1::2]
    node_max, node_idx = (a @ b.transpose(-1, -2)).max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
    dst_idx = node_idx[..., None].gather(dim=1, index=src_idx)

    def merge(x: torch.Tensor, mode: str) -> torch.Tensor:
        src, dst = x[:, ::2], x[:, 1::2]
        n, t1, c = src.shape
        unm = src.gather(dim=1, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=1, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(1, dst_idx.expand(n, r, c), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    return merge


@torch.no_grad()
def morph_source(tokens: torch.Tensor, num_merges: int, iterations: int) -> torch.Tensor:
    """Source matrix (B, G, N) of ``iterations`` matching rounds merging ``num_merges`` tokens in
    all, r = ceil(n / k) per round or floor(n / k) when ceil would merge more than n (the official
    engine compares with the largest n it draws from), each round's metric the size-weighted
    means of the merged tokens (``merge_wavg``); a round merges at most half the tokens left."""
    b, n, _ = tokens.shape
    source = torch.eye(n, device=tokens.device).expand(b, n, n)
    if num_merges == 0:
        return source
    r = math.ceil(num_merges / iterations)
    r = math.floor(num_merges / iterations) if r * iterations > num_merges else r
    x, size = tokens.float(), torch.ones(b, n, 1, device=tokens.device)
    for _ in range(iterations):
        step = min(r, x.shape[1] // 2)
        if step <= 0:
            break
        merge = _bipartite_merge(x, step)
        source = merge(source, "amax")
        x = merge(x * size, "sum")
        size = merge(size, "sum")
        x = x / size
    return source


def morph(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Every token of ``x`` (B, N, D) replaced by the mean of its group: S^T (S x / |S|)."""
    source = source.to(x.dtype)
    return source.transpose(1, 2) @ (source @ x / (source.sum(-1, keepdim=True) + 1e-6))


@METHODS.register("dtm", help="DTM: MAE whose prediction and target are averaged over token groups merged by bipartite matching (Kim et al. 2024)")
class DTM(MAE):
    """Dynamic token morphing on MAE's pixel target (arXiv:2401.00230); see the module docstring."""

    @dataclass
    class Config(MAE.Config):
        name: str = "dtm"
        num_merges: List[int] = field(default_factory=lambda: [49, 147])   # per level
        matching_iters: List[int] = field(default_factory=lambda: [7, 14])

    tiny_config = {**MAE.tiny_config, "num_merges": [0, 24], "matching_iters": [1, 3]}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        if len(c.num_merges) != len(c.matching_iters) or not c.num_merges:
            raise ConfigError(f"method.num_merges={list(c.num_merges)} and method.matching_iters="
                              f"{list(c.matching_iters)} need one entry per morphing level each")
        for n, k in zip(c.num_merges, c.matching_iters):
            if not 0 <= n < self.num_patches or k < 1:
                raise ConfigError(f"a morphing level merges {n} of {self.num_patches} tokens in "
                                  f"{k} rounds; need 0 <= merges < patches and rounds >= 1")
        self.levels = [(int(n), int(k)) for n, k in zip(c.num_merges, c.matching_iters)]

    def reconstruction_loss(self, pred: torch.Tensor, images: torch.Tensor,
                            mask_idx: torch.Tensor) -> torch.Tensor:
        """Mean over the morphing levels of the smooth-L1 (beta 2) loss between the morphed
        prediction and the morphed (then standardised) target, over all patches."""
        target = patchify(images, self.patch_size).float()
        total = pred.new_zeros((), dtype=torch.float32)
        for num_merges, iterations in self.levels:
            source = morph_source(target, num_merges, iterations)
            t = morph(target, source)
            if self.norm_pix_loss:
                t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + 1e-6).sqrt()
            total = total + F.smooth_l1_loss(morph(pred.float(), source), t, beta=2.0)
        return total / len(self.levels)
