"""data2vec 2.0's inverse block masking (Baevski et al. 2022, arXiv:2212.07525, Sec. 3), batched
on the device.

facebookresearch/fairseq ``fairseq/data/data_utils.py`` ``compute_block_mask_2d(inverse_mask=True,
require_same_masks=True)``: instead of masking blocks, blocks of *visible* patches are drawn and
everything else is masked, so each visible region is a clump and the student has to predict far
from what it sees:

    keep_prob = 1 - mask_prob                                          # 0.2 at mask_prob 0.8
    centres   = int(N * (keep_prob + adjust) / m**2) uniform patches   # with replacement
    visible   = union of the m x m blocks around the centres (clamped to the grid)
    then exactly K = int(N * keep_prob) visible per sample: K chosen at random among the block
    patches when there are more, all of them plus random others when there are fewer
    mask      = not visible

The count K is fixed by the configuration (the official ``require_same_masks``), so the shapes
are the same at every step; nothing is read back to the host.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from vissl_lite.augment.masks import PatchMask, _rand, patch_mask_from_order
from vissl_lite.errors import MaskError


def inverse_block_mask(batch: int, grid: Tuple[int, int], mask_prob: float = 0.8,
                       mask_length: int = 3, mask_prob_adjust: float = 0.0, device=None,
                       generator: Optional[torch.Generator] = None) -> PatchMask:
    """Masks for ``batch`` samples on a ``grid`` (gh, gw) of patches; see the module docstring."""
    gh, gw = int(grid[0]), int(grid[1])
    num = gh * gw
    keep_prob = 1 - mask_prob
    num_keep = int(num * keep_prob)
    if not 0.0 < mask_prob < 1.0 or num_keep < 1:
        raise MaskError(f"mask_prob={mask_prob} keeps {num_keep} of {num} patches; pick a value in "
                        f"(0, 1) that keeps at least one (data2vec 2.0: 0.8)")
    if mask_length < 1:
        raise MaskError(f"mask_length={mask_length}: blocks need a side of at least 1 patch")
    num_centres = int(num * ((keep_prob + mask_prob_adjust) / mask_length ** 2))
    centres = (_rand((batch, num_centres), generator, device) * num).long().clamp_(max=num - 1)
    offsets = torch.arange(mask_length, device=centres.device) - mask_length // 2
    rows = (centres // gw)[:, :, None, None] + offsets[:, None]
    cols = (centres % gw)[:, :, None, None] + offsets[None, :]
    block = rows.clamp(0, gh - 1) * gw + cols.clamp(0, gw - 1)         # (B, C, m, m)
    visible = torch.zeros(batch, num, device=centres.device)
    visible.scatter_(1, block.flatten(1), 1.0)
    order = (_rand((batch, num), generator, device) + 2.0 * visible).argsort(dim=1,
                                                                              descending=True)
    return patch_mask_from_order(order, num_keep)
